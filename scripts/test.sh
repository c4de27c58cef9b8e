#!/usr/bin/env bash
# The project's test command: sets up both stacks (cached) and runs
#   ruff, the TF 1.15 API check, and the whole pytest suite on
#   Python 3.11 + TensorFlow 2.x and on Python 3.7 + TensorFlow 1.15.
# Extra arguments go to pytest (e.g. scripts/test.sh -k model -x).
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2

GLOW_PY_TF2="$(scripts/setup_env.sh tf2)/bin/python"
GLOW_PY_TF115="$(scripts/setup_env.sh tf115)/bin/python"
export GLOW_PY_TF2 GLOW_PY_TF115

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
echo "== pytest: $("$GLOW_PY_TF2" -c 'import sys, tensorflow as t; print("Python %d.%d, TensorFlow %s" % (sys.version_info[0], sys.version_info[1], t.__version__))')"
"$GLOW_PY_TF2" -m pytest -q -p no:cacheprovider "$@" tests || status=1
echo "== pytest: $("$GLOW_PY_TF115" -c 'import sys, tensorflow as t; print("Python %d.%d, TensorFlow %s" % (sys.version_info[0], sys.version_info[1], t.__version__))' 2>/dev/null)"
"$GLOW_PY_TF115" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning "$@" tests || status=1
exit $status
