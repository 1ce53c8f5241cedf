#!/usr/bin/env bash
# Mutation testing (mutmut, pinned in requirements-dev.txt) of trainer/ and the metric functions of
# data_interface.py, against the fast tests listed in setup.cfg. Prints killed / total per function.
#
#   bash tests/mutation.sh                                # every selected mutant (about 15 min on 2 cores)
#   bash tests/mutation.sh 'trainer.log_probs.*'          # a subset, as mutmut name globs
#   PYTHON=/path/to/python MAX_CHILDREN=1 bash tests/mutation.sh
#
# Results stay in mutants/ (git-ignored): `python -m mutmut show NAME` prints a mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c "import mutmut" 2>/dev/null || "$PYTHON" -m pip install -r requirements-dev.txt

METRIC_FUNCTIONS=(candidates_in_output prediction_of recommendation_metrics ranking_metrics rank_of_target)
if [ $# -gt 0 ]; then
    SELECTED=("$@")
else
    SELECTED=("trainer.softmax_dpo_trainer.*" "trainer.log_probs.*")  # checkpoints.py / non_finite.py: tests/test_faults.py
    for name in "${METRIC_FUNCTIONS[@]}"; do SELECTED+=("data_interface.x_${name}__mutmut_*"); done
fi

# Forked test processes and OpenMP thread pools do not mix; the tests use tiny matrices anyway.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=disabled
rm -rf mutants  # mutmut reuses old results when the sources look unchanged; start clean
"$PYTHON" -m mutmut run --max-children "${MAX_CHILDREN:-2}" "${SELECTED[@]}" > mutants.log 2>&1 || {
    tail -40 mutants.log; exit 1; }
mv mutants.log mutants/run.log

"$PYTHON" - "${SELECTED[@]}" <<'PY'
"""Score per file and function from mutmut's result files (mutants/**/*.meta: exit code per mutant)."""
import fnmatch
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

patterns = sys.argv[1:]
per_function = defaultdict(Counter)
survivors = defaultdict(list)
for meta in sorted(Path("mutants").rglob("*.py.meta")):
    source = meta.relative_to("mutants").with_suffix("").as_posix()
    for name, exit_code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
            continue
        # data_interface.x_prediction_of__mutmut_3, trainer.m.x\u01c1Class\u01c1method__mutmut_7
        function = name.split(".")[-1].rsplit("__mutmut_", 1)[0][2:].replace("\u01c1", ".")
        status = status_by_exit_code[exit_code]  # mutmut's own reading of its exit codes
        per_function[(source, function)][status] += 1
        if status in ("survived", "no tests"):
            survivors[(source, function)].append(name.rsplit("__mutmut_", 1)[1])

totals = defaultdict(Counter)
print(f"{'file':<32} {'function':<40} {'killed':>6} {'total':>6}  surviving")
for (source, function), counts in sorted(per_function.items()):
    total = sum(counts.values())
    killed = counts["killed"] + counts["timeout"]
    totals[source].update(counts)
    print(f"{source:<32} {function:<40} {killed:>6} {total:>6}  {' '.join(survivors[(source, function)])}")
print()
grand = Counter()
for source, counts in sorted(totals.items()):
    total = sum(counts.values())
    killed = counts["killed"] + counts["timeout"]
    grand.update(counts)
    print(f"{source}: {total} mutants, {killed} killed, {total - killed} surviving ({dict(counts)})")
total = sum(grand.values())
killed = grand["killed"] + grand["timeout"]
print(f"mutation score: {killed} / {total} killed ({100 * killed / max(total, 1):.1f} %)")
PY
