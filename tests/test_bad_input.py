"""Bad input -> one clear line naming the bad value (no traceback), a non-zero exit, and a failed record.

Most cases run in-process (compose + execute) and check the exception: run.py prints its first line as
"error: ..." and exits 2 for ValueError / FileNotFoundError, 1 for run failures (the CLI cases check that path).
"""

from __future__ import annotations

import json
import math

import pytest

from dcft_lab.module import NonFiniteLossError
from helpers import logged_values, one_line_error, read_csv_log, run_cli, run_inprocess

SST2_HEADER = "sentence\tlabel\n"


def _sst2_rows(labels: list[str]) -> str:
    return SST2_HEADER + "".join(f"sentence number {i} \t{y}\n" for i, y in enumerate(labels))


GOOD_SST2 = _sst2_rows(["0", "1"] * 3)


def _expect_failure(overrides, run_dir, data_root, error, *fragments):
    with pytest.raises(error) as info:
        run_inprocess(["task=sst2", *overrides], run_dir, data_root)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


@pytest.mark.parametrize("overrides, error, fragments", [
    (["task.name=foo"], ValueError, ["unknown task 'foo'", "expected one of: cola, sst2"]),
    (["backbone.name=foo"], ValueError, ["unknown backbone 'foo'", "tiny-deberta"]),
    # tiny-deberta: every adapted matrix has dimensions 48 or 96; a 5x5 kernel with stride 5 fits neither
    (["method.kernel_size=5"], ValueError, ["kernel_size=5", "d_in=48"]),
    (["method.rank=0"], ValueError, ["rank=0", "expected an integer >= 1"]),
    (["method=lora", "method.target_modules=[foo_proj]"], ValueError,
     ["target modules ['foo_proj'] not found", "DebertaV2ForSequenceClassification"]),
])
def test_bad_config_values(overrides, error, fragments, glue_tsv_root, tmp_path):
    _expect_failure(overrides, tmp_path / "run", glue_tsv_root("sst2"), error, *fragments)


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "no-such-data"
    _expect_failure([], tmp_path / "run", missing, FileNotFoundError, f"data root {missing} not found")
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and record["failure"]["type"] == "FileNotFoundError"


@pytest.mark.slow  # a run in a subprocess
def test_cli_missing_data_folder_from_env(tmp_path):
    missing = tmp_path / "no-such-data"
    proc = run_cli(["task=sst2"], tmp_path / "run", missing)
    assert proc.returncode == 2
    line = one_line_error(proc.stderr)
    assert f"data root {missing} not found" in line and "FileNotFoundError" in line


def test_missing_file(glue_tsv_root, tmp_path):
    root = glue_tsv_root("sst2", raw={"train.tsv": GOOD_SST2})  # no dev.tsv
    _expect_failure(["data.source=local"], tmp_path / "run", root, FileNotFoundError,
                    str(root / "glue" / "SST-2" / "dev.tsv"), "not found")


def test_missing_file_with_auto_source_names_the_file(glue_tsv_root, tmp_path):
    root = glue_tsv_root("sst2", raw={"train.tsv": GOOD_SST2})
    _expect_failure([], tmp_path / "run", root, FileNotFoundError, "dev.tsv")


@pytest.mark.parametrize("train, dev, fragments", [
    # a row with three columns where the header has two
    (SST2_HEADER + "fine row \t1\nbroken row \t0\textra\n", GOOD_SST2, ["train.tsv:3", "got 3 columns, expected 2"]),
    (GOOD_SST2, SST2_HEADER + "a row \tpositive\n", ["dev.tsv:2", "label 'positive'", "['0', '1']"]),
    (_sst2_rows(["0"] * 6), GOOD_SST2, ["validation labels ['positive']", "absent from the train set"]),
])
def test_bad_data_files(train, dev, fragments, glue_tsv_root, tmp_path):
    root = glue_tsv_root("sst2", raw={"train.tsv": train, "dev.tsv": dev})
    _expect_failure(["data.source=local"], tmp_path / "run", root, ValueError, *fragments)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and record["failure"]["step"] is None  # before any training step


def test_nan_loss_is_recorded_with_its_step(glue_tsv_root, tmp_path):
    err = _expect_failure(["run.inject_failure=nan_loss:1"], tmp_path / "run", glue_tsv_root("sst2"),
                          NonFiniteLossError, "non-finite training loss (nan) at step 1")
    assert err.step == 1
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed"
    assert record["failure"] == {"type": "NonFiniteLossError", "step": 1,
                                 "reason": "non-finite training loss (nan) at step 1"}


def test_nan_loss_tolerated_when_asked(glue_tsv_root, tmp_path):
    """run.fail_on_nonfinite_loss=false: the hook really produces NaN losses, and the run goes on to the end."""
    record = run_inprocess(["task=sst2", "run.inject_failure=nan_loss:1", "run.fail_on_nonfinite_loss=false"],
                           tmp_path / "run", glue_tsv_root("sst2"))
    assert record["status"] == "completed" and record["global_steps"] == 3
    losses = logged_values(read_csv_log(tmp_path / "run"), "train/task_loss")
    assert len(losses) == 3 and math.isfinite(losses[0]) and all(math.isnan(v) for v in losses[1:])


@pytest.mark.parametrize("error, code", [(ValueError("bad value 'x'\nsecond line"), 2),
                                         (FileNotFoundError("data root /nope not found"), 2),
                                         (RuntimeError("injected failure"), 1)])
def test_cli_failure_is_one_line_an_exit_code_and_a_record(error, code, tmp_path, capsys):
    """What `python -m dcft_lab.run` does with an exception (run._fail; the CLI tests run it for real, slow): one
    `error:` line, exit code 2 for bad input and 1 otherwise, a failed record when the run wrote none; in a multirun
    the same, without exiting, so that the sweep's other jobs go on."""
    from dcft_lab.run import _fail

    first_line = str(error).splitlines()[0]
    with pytest.raises(SystemExit) as info:
        _fail(error, tmp_path / "run", multirun=False)
    assert info.value.code == code
    line = one_line_error(capsys.readouterr().err)
    assert first_line in line and type(error).__name__ in line and str(tmp_path / "run" / "results.json") in line
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and record["failure"] == {"type": type(error).__name__, "reason": first_line,
                                                                  "step": None}
    job = tmp_path / "sweep" / "job"
    job.mkdir(parents=True)
    written = {"status": "failed", "failure": {"type": "X", "reason": "recorded by the run", "step": 3}}
    (job / "results.json").write_text(json.dumps(written))
    assert _fail(error, job, multirun=True) is None  # no SystemExit
    assert first_line in one_line_error(capsys.readouterr().err)
    assert json.loads((job / "results.json").read_text()) == written  # the run's own record is kept
