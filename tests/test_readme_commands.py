"""The README's commands are exact (issue 32, "Done when"): every `python -m dcft_lab.run` line of its GPU-cluster,
sweep and several-GPU blocks composes and passes the checks as printed, its `DRY_RUN=1` lines exit 0, a sweep logged
to W&B (offline here) gives each job a W&B run in the sweep's group and the one `wandb sync` line it promises, and its
`transformers.Trainer` block trains DCFT with the regulariser in every step's loss. Also the README's navigation
(issue 32 item 7): the contents list every section and every link in it resolves."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import REPO, TINY_RUN

README = (REPO / "README.md").read_text()


# ---- the README's shell commands -------------------------------------------------------------------------------
def _section(title: str) -> str:
    """The text of the README section whose heading is `title` (up to the next heading of any level; `#` lines
    inside code blocks are comments, not headings)."""
    lines, in_code, found = [], False, False
    for line in README.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"#+ ", line):
            if found:
                break
            found = line.split(" ", 1)[1] == title
            continue
        if found:
            lines.append(line)
    return "\n".join(lines) + "\n" if found else ""  # a missing section: no commands (the tests below fail)


def _run_commands(text: str) -> list[str]:
    """The `python -m dcft_lab.run` lines of the ```bash blocks in `text`: continuations joined, comments dropped;
    lines with a `...` placeholder are left out (they are not meant to run as printed)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if "python -m dcft_lab.run" in line and "..." not in line:
                commands.append(" ".join(line.split()))
    return commands


SECTIONS = ["On your own GPU machine or cluster", "Sweeps, SLURM and the paper's tables", "Several GPUs / several nodes"]
COMMANDS = [c for title in SECTIONS for c in _run_commands(_section(title))]
GPU_CLUSTER = _run_commands(_section(SECTIONS[0]))


def _argv(command: str) -> tuple[dict, list[str]]:
    """`VAR=x python -m dcft_lab.run a b` -> ({"VAR": "x"}, ["a", "b"])."""
    words = shlex.split(command)
    env = {}
    while "=" in words[0] and not words[0].startswith("python"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:3] == ["python", "-m", "dcft_lab.run"], command
    return env, words[3:]


def test_readme_lists_the_gpu_cluster_commands():
    """The commands the issue asks for are there: the paper setting on one GPU, and the same as a SLURM job, checked
    first with DRY_RUN=1."""
    assert GPU_CLUSTER == [
        "python -m dcft_lab.run experiment=glue/mnli trainer=gpu",
        "DRY_RUN=1 python -m dcft_lab.run -m experiment=glue/mnli trainer=gpu hydra/launcher=slurm "
        "hydra.launcher.partition=gpu",
        "python -m dcft_lab.run -m experiment=glue/mnli trainer=gpu hydra/launcher=slurm hydra.launcher.partition=gpu",
    ]
    assert len(COMMANDS) >= 9


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_run_commands_compose_and_pass_the_checks(command, tmp_path, monkeypatch):
    """Each command as printed: every job composes and passes the config check (what `run` does before anything
    heavy), so none of them stops on a typo, a missing `+` or an out-of-range value."""
    from dcft_lab.run import check_jobs

    monkeypatch.chdir(tmp_path)
    _, argv = _argv(command)
    folders = check_jobs(argv)
    assert folders and not any(f.exists() for f in folders)  # checked, nothing written


@pytest.mark.slow  # each in its own process: the SLURM launcher's set-up reconfigures logging process-wide
@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("DRY_RUN=1 ")])
def test_readme_dry_run_commands_exit_0(command, tmp_path):
    """The README's DRY_RUN=1 lines, run as printed: exit 0, an sbatch script and a job layout, no ERROR, nothing
    submitted or written."""
    env, argv = _argv(command)
    proc = subprocess.run([sys.executable, "-m", "dcft_lab.run", *argv], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env={**os.environ, **env, "HYDRA_FULL_ERROR": "0"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "#SBATCH" in proc.stdout and "ERROR" not in out and "Traceback" not in out
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


# ---- a sweep logged to W&B -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_logged_to_wandb_offline(tmp_path, glue_tsv_root):
    """The README's sweep (`python -m dcft_lab.run -m ... method.kernel_size=...`), shrunk to 2 tiny jobs and logged to
    W&B offline: each job one offline W&B run whose group is the sweep name and whose tags name its kernel size, and
    the sweep's last line the one `wandb sync` command for all of them (README, "W&B" and "Sweeps")."""
    sweep = tmp_path / "sweep"
    run = [a for a in TINY_RUN if not a.startswith("logger=")]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "DCFT_LAB_DATA": str(glue_tsv_root("rte")), "DCFT_LAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "dcft_lab.run", "-m", *run, "logger=wandb", "task=rte",
                           "trainer.max_steps=1", "method=dcft", "method.kernel_size=2,4", f"hydra.sweep.dir={sweep}"],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "2 of 2 jobs completed" in proc.stdout
    assert lines[-1] == f"W&B offline runs: wandb sync {sweep}/*/wandb/offline-run-*"
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))  # what that command's glob uploads
    assert len(runs) == 2 and len({r.parent.parent for r in runs}) == 2  # one W&B run per job folder
    stored = [b"".join(p.read_bytes() for p in r.glob("*.wandb")) for r in runs]
    groups = {re.search(r"^sweep_name: (\S+)$", (r.parent.parent / ".hydra" / "config.yaml").read_text(),
                        re.MULTILINE).group(1) for r in runs}
    assert len(groups) == 1 and "by-kernel_size" in next(iter(groups))  # one readable group for the sweep
    group = groups.pop()
    kernels = []
    for run, data in zip(runs, stored):
        wandb = json.loads((run.parent.parent / "results.json").read_text())["wandb"]
        assert run.name.endswith(f"-{wandb['id']}")  # the job's own W&B run
        assert wandb["tags"][:3] == ["dcft", "rte", "tiny-deberta"]
        kernels += [t for t in wandb["tags"] if t.startswith("kernel_size=")]
        assert group.encode() in data and all(t.encode() in data for t in wandb["tags"])  # in what sync uploads
    assert sorted(kernels) == ["kernel_size=2", "kernel_size=4"]


# ---- DCFT under transformers.Trainer, as the README prints it --------------------------------------------------
TRAINER_MARKER = "<!-- tested: tests/test_readme_commands.py runs this block -->"


def _trainer_block() -> str:
    after = README.split(TRAINER_MARKER, 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_trainer_block_trains_with_the_regulariser_in_each_steps_loss(tmp_path, monkeypatch):
    """The README's transformers.Trainer block, executed as printed: every training step's loss (what Trainer
    back-propagates) is the model's task loss plus orth_reg_weight * R, with no compute_loss of the user's."""
    import torch
    import transformers

    from dcft_lab.adapters.dcft.model import DCFTModel

    block = _trainer_block()
    assert "transformers.Trainer(" in block and "compute_loss" not in block
    seen = {"task": [], "reg": [], "trainer": []}
    model_forward = transformers.GPT2LMHeadModel.forward
    orthogonal_regularizer = DCFTModel.orthogonal_regularizer
    compute_loss = transformers.Trainer.compute_loss

    @functools.wraps(model_forward)  # the same signature: Trainer keeps the columns the model takes
    def forward(self, *args, **kwargs):
        out = model_forward(self, *args, **kwargs)
        if self.training and out.loss is not None:
            seen["task"].append(out.loss.detach().clone())  # before any hook adds to it
        return out

    def regulariser(self, *args, **kwargs):
        term = orthogonal_regularizer(self, *args, **kwargs)
        if torch.is_grad_enabled():
            seen["reg"].append(term.detach().clone())
        return term

    def trainer_loss(self, *args, **kwargs):
        loss = compute_loss(self, *args, **kwargs)
        seen["trainer"].append((loss[0] if isinstance(loss, tuple) else loss).detach().clone())
        return loss

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "forward", forward)
    monkeypatch.setattr(DCFTModel, "orthogonal_regularizer", regulariser)
    monkeypatch.setattr(transformers.Trainer, "compute_loss", trainer_loss)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README transformers.Trainer block", "exec"), {})

    assert len(seen["trainer"]) == len(seen["task"]) == 2  # max_steps=2, one forward each
    assert len(seen["reg"]) == 2, "the regulariser was not added to the training loss"
    for task, reg, total in zip(seen["task"], seen["reg"], seen["trainer"]):
        assert reg > 0
        torch.testing.assert_close(total, task + reg)
    config = (tmp_path / "dcft-trainer" / "adapter" / "adapter_config.json").read_text()
    assert '"peft_type": "DCFT"' in config and '"orth_reg_weight": 0.1' in config


# ---- navigation (issue 32 item 7) ------------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (word characters, '-' and spaces kept), spaces
    to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings() -> list[tuple[int, str]]:
    """(level, text) of every README heading outside code blocks."""
    out, in_code = [], False
    for line in README.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"(#+) (.+)$", line)):
            out.append((len(m.group(1)), m.group(2)))
    return out


def test_readme_contents_list_every_section_and_every_link_resolves():
    """A contents list near the top names every `##` section after it, each of its links is a heading's anchor, and
    every relative link of the README to another file of the repository exists."""
    head, found, body = README.partition("\n## Contents\n")
    assert found, "README has no '## Contents' section"
    assert len(head.splitlines()) < 80  # the contents come within the first screens
    anchors = re.findall(r"\]\(#([^)]+)\)", body.split("\n## ", 1)[0])
    headings = _headings()
    after = headings[[text for _, text in headings].index("Contents") + 1:]
    missing = [a for a in anchors if a not in {_slug(text) for _, text in headings}]
    assert not missing, f"contents links without a heading: {missing}"
    unlisted = [text for level, text in after if level == 2 and _slug(text) not in anchors]
    assert not unlisted, f"sections missing from the contents: {unlisted}"
    for target in re.findall(r"\]\(((?!https?://|#)[^)#]+)", README):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"


def test_docs_do_not_repeat_the_readme():
    """One home per topic: no paragraph of docs/*.md (80 characters or more) is also a paragraph of the README, so
    the two cannot drift apart again."""
    def paragraphs(text: str) -> set[str]:
        return {" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if len(" ".join(p.split())) >= 80}

    readme = paragraphs(README)
    for doc in sorted((REPO / "docs").glob("*.md")):
        shared = paragraphs(doc.read_text()) & readme
        assert not shared, f"{doc.name} repeats README paragraphs: {sorted(shared)[:2]}"


def test_makefile_states_no_untrue_study_time():
    """The Makefile said the CPU study takes '<= 2 h'; it took about 53 h of job time (README, study v1)."""
    makefile = (REPO / "Makefile").read_text()
    assert "<= 2 h" not in makefile and "<=2 h" not in makefile


# ---- the GPU path's numbers ------------------------------------------------------------------------------------
def test_readme_gpu_memory_estimate_matches_the_counts(capsys):
    """The GPU section's memory estimate (frozen weights, their float32 size, trainable adapter + head) is what the
    command it names, `python -m dcft_lab.params experiment=glue/mnli`, counts; the section says what to do when
    determinism fails on CUDA (issue 32: no memory figure, run.deterministic never discussed)."""
    from dcft_lab import params

    gpu = _section(SECTIONS[0])
    assert "python -m dcft_lab.params experiment=glue/mnli" in " ".join(gpu.split())
    frozen_m = int(re.search(r"weights \((\d+)M parameters\)", gpu).group(1))
    gigabytes = float(re.search(r"about ([\d.]+) GB in float32", gpu).group(1))
    trainable_k = int(re.search(r"adapter \+ head \((\d+)k", gpu).group(1))
    assert "run.deterministic=false" in gpu and "estimate" in gpu.lower()

    assert params.main(["experiment=glue/mnli"]) == 0
    out = capsys.readouterr().out
    trainable = int(re.search(r"trainable ([\d,]+)", out).group(1).replace(",", ""))
    frozen = int(re.search(r"frozen base ([\d,]+)", out).group(1).replace(",", ""))
    assert round(frozen / 1e6) == frozen_m and round(trainable / 1e3) == trainable_k
    assert abs(frozen * 4 / 1e9 - gigabytes) < 0.01
