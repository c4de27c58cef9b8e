#!/usr/bin/env bash
# The project's test command: sets up the stacks (cached) and runs
#   ruff, the TF 1.15 API check, and the whole pytest suite on
#   Python 3.11 + TensorFlow 2.x and on Python 3.7 + TensorFlow 1.15,
#   then tests/test_horovod.py (2 Horovod processes) on the tf115-horovod stack.
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

status=0
# test_horovod.py runs once, on the stack that has Horovod (it starts its own
# processes, so running it from the other stacks would only repeat it).
echo "== pytest: $("$GLOW_PY_TF2" -c 'import sys, tensorflow as t; print("Python %d.%d, TensorFlow %s" % (sys.version_info[0], sys.version_info[1], t.__version__))')"
"$GLOW_PY_TF2" -m pytest -q -p no:cacheprovider --ignore=tests/test_horovod.py "$@" tests || status=1
echo "== pytest: $("$GLOW_PY_TF115" -c 'import sys, tensorflow as t; print("Python %d.%d, TensorFlow %s" % (sys.version_info[0], sys.version_info[1], t.__version__))' 2>/dev/null)"
"$GLOW_PY_TF115" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning --ignore=tests/test_horovod.py \
  "$@" tests || status=1
echo "== pytest: $("$GLOW_PY_HOROVOD" -c 'import sys, tensorflow as t, horovod as h; print("Python %d.%d, TensorFlow %s, Horovod %s" % (sys.version_info[0], sys.version_info[1], t.__version__, h.__version__))' 2>/dev/null)"
# Exit status 5 is "no test selected", e.g. by a -k filter that matches none here.
"$GLOW_PY_HOROVOD" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning "$@" tests/test_horovod.py \
  || { rc=$?; [ $rc -eq 5 ] || status=1; }
exit $status
