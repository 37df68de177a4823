#!/usr/bin/env bash
# Commit a study's finished runs and its summary files, nothing else: a run folder is added only when its
# results.json says "completed" (running / paused / failed folders stay uncommitted; checkpoints and adapters are
# git-ignored). Usage: scripts/commit_study_runs.sh [STUDY_DIR]   (default results/table1_cpu_v2)
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
out="${1:-results/table1_cpu_v2}"
[ -d "$out" ] || { echo "error: $out is not a folder; expected a study's output folder" >&2; exit 2; }
python3 - "$out" <<'PY' | while IFS= read -r folder; do git add -- "$folder"; done
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).rglob("results.json")):
    try:
        if json.loads(path.read_text()).get("status") == "completed":
            print(path.parent)
    except (OSError, ValueError):
        pass
PY
for f in progress.md pilot.md selection.json study.log README.md; do
  [ -e "$out/$f" ] && git add -- "$out/$f"
done
git add -- "$out"/*.md "$out"/*.csv "$out"/*.png 2>/dev/null || true
total=$(grep -rl '"status": "completed"' --include=results.json "$out" | wc -l)
if git diff --cached --quiet; then
  echo "nothing new"
else
  git commit -q -m "study $(basename "$out"): completed runs so far ($total), progress and selection"
  echo "committed ($total completed runs in $out)"
fi
