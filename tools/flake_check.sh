#!/usr/bin/env bash
# Run every distributed (2-process gloo) test file N times in a row (default 30) and count failures.
# usage: tools/flake_check.sh [RUNS] [test files...]   (slow tests of those files included: -m "")
# Not part of `make test`. Exit status 1 when any run failed; logs of failed runs in $FLAKE_LOGS.
set -u
RUNS=${1:-30}
shift || true
FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
  FILES=(tests/core/test_dist.py tests/align_uniform/test_au_dist.py tests/selfsup_det/test_sdet_syncbn.py
         tests/rdm/test_rdm_dist.py tests/twist/test_twist_distributed.py tests/unigrad/test_unigrad_dist.py)
fi
PY=${PY:-.venv/bin/python}
FLAKE_LOGS=${FLAKE_LOGS:-$(mktemp -d /tmp/flake_check.XXXXXX)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
status=0
for f in "${FILES[@]}"; do
  fails=0
  start=$(date +%s)
  for i in $(seq 1 "$RUNS"); do
    log="$FLAKE_LOGS/$(basename "$f" .py).$i.log"
    if "$PY" -m pytest -q -x -p no:cacheprovider -m "" "$f" >"$log" 2>&1; then
      rm -f "$log"
    else
      fails=$((fails + 1)); status=1
      echo "FAIL $f run $i (log: $log)"
    fi
  done
  echo "$f: $((RUNS - fails))/$RUNS passed, $(( $(date +%s) - start )) s"
done
exit $status
