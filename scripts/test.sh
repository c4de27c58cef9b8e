#!/usr/bin/env bash
# The project's test command: sets up the stacks (cached) and runs
#   ruff, the TF 1.15 API check, and the whole pytest suite on
#   Python 3.11 + TensorFlow 2.x and on Python 3.7 + TensorFlow 1.15,
#   and tests/test_horovod.py (2 Horovod processes) on the tf115-horovod stack.
# The two suites run side by side, each keeping about one core busy (most of
# a suite's time is one Python thread building graphs), and the Horovod test
# starts when the first of them ends. Each writes its own log, printed whole
# (with a header naming its stack) when it is done, in that order; the exit
# status is non-zero if any of them failed.
# Extra arguments go to pytest (e.g. scripts/test.sh -k model -x).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2

GLOW_PY_TF2="$(scripts/setup_env.sh tf2)/bin/python"
GLOW_PY_TF115="$(scripts/setup_env.sh tf115)/bin/python"
GLOW_PY_HOROVOD="$(scripts/setup_env.sh tf115-horovod)/bin/python"
export GLOW_PY_TF2 GLOW_PY_TF115 GLOW_PY_HOROVOD

echo "== ruff"
"$GLOW_PY_TF2" -m ruff check .

checker=../shared/tools/tf115_api_check.py
if [ -f "$checker" ]; then
  echo "== TF 1.15 API check"
  "$GLOW_PY_TF2" "$checker" .
elif [ -n "${CI:-}" ]; then
  echo "scripts/test.sh: $checker not found (CI needs it)" >&2; exit 1
else
  echo "== TF 1.15 API check skipped: $checker not found"
fi

versions='import sys, tensorflow as t
print("Python %d.%d, TensorFlow %s" % (sys.version_info[0], sys.version_info[1], t.__version__), end="")
if "horovod" in sys.argv[1:]:
    import horovod as h
    print(", Horovod %s" % h.__version__, end="")
print()'

# One suite in the background: a header, then pytest, into $logs/NAME.log;
# pytest's exit status into $logs/NAME.rc.
suite() {
  local name=$1 python=$2; shift 2
  (
    set +e
    started=$SECONDS
    echo "== pytest: $("$python" -c "$versions" "$name" 2>/dev/null)"
    "$python" -m pytest -q -p no:cacheprovider "$@"
    rc=$?
    echo "== $name: pytest exit status $rc after $((SECONDS - started)) s"
    echo $rc >"$logs/$name.rc"
  ) </dev/null >"$logs/$name.log" 2>&1 &
  pids[$name]=$!
}

logs=$(mktemp -d)
declare -A pids=()
# Each suite runs in a process group of its own (job control, set -m below),
# so that an interrupted script stops the suites and all they started. With
# SIGKILL: tests run train.py's main() in process, which turns SIGTERM into
# "save and stop training", and the suite would go on.
cleanup() {
  disown -a 2>/dev/null || true  # no "Killed" notices
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "$logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -m

# test_horovod.py runs once, on the stack that has Horovod (it starts its own
# processes, so running it from the other stacks would only repeat it).
echo "== pytest on TF 2.x and TF 1.15 at the same time, then Horovod (each log follows when it is done)"
suite tf2 "$GLOW_PY_TF2" --ignore=tests/test_horovod.py "$@" tests
suite tf115 "$GLOW_PY_TF115" -W ignore::DeprecationWarning --ignore=tests/test_horovod.py "$@" tests
wait -n || true
suite horovod "$GLOW_PY_HOROVOD" -W ignore::DeprecationWarning "$@" tests/test_horovod.py

status=0
for name in tf2 tf115 horovod; do
  wait "${pids[$name]}" 2>/dev/null || true  # (one of the first two may be reaped already)
  cat "$logs/$name.log"
  rc=$(cat "$logs/$name.rc" 2>/dev/null || echo "killed")
  [ "$rc" != killed ] || { echo "== $name: ended without an exit status"; rc=1; }
  # Exit status 5 is "no test selected", e.g. by a -k filter that matches
  # none of test_horovod.py's tests.
  if [ "$rc" -ne 0 ] && ! { [ "$name" = horovod ] && [ "$rc" -eq 5 ]; }; then
    status=1
  fi
done
pids=()  # all done: nothing for cleanup to stop
exit $status
