#!/usr/bin/env bash
# Run the tiny end-to-end test (tests/test_workflow.py) on the working tree and on git revision REV, then compare
# the two results folders with `cellresdm compare` (arrays bit-identical, tables equal; timings left out).
# A refactor that should not change any number passes this. Usage: scripts/compare_revisions.sh REV [WORKDIR]
set -euo pipefail
rev=${1:?usage: scripts/compare_revisions.sh REV [WORKDIR]}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${2:-$(mktemp -d)}
python="$repo/.venv/bin/python"
test_id=tests/test_workflow.py::test_tiny_end_to_end_run

git -C "$repo" worktree add --detach "$work/old-tree" "$rev" >/dev/null
trap 'git -C "$repo" worktree remove --force "$work/old-tree"' EXIT
ln -s "$repo/.venv-cp" "$work/old-tree/.venv-cp"

run() {  # run the test of the checkout $1 (its own cellresdm package) into $2
  (cd "$1" && PYTHONPATH="$1" "$python" -m pytest -q -p no:cacheprovider "$test_id" --basetemp="$2")
}
run "$work/old-tree" "$work/old"
run "$repo" "$work/new"
results=test_tiny_end_to_end_run0/work/results
PYTHONPATH="$repo" "$python" -m cellresdm.cli compare "$work/old/$results" "$work/new/$results"
