#!/usr/bin/env bash
# Create (or reuse) the virtual environment for one stack and print its path.
#
#   scripts/setup_env.sh tf2    # Python 3.11 (or python3) + TensorFlow 2.x
#   scripts/setup_env.sh tf115  # Python 3.7.16 from pyenv + TensorFlow 1.15
#   scripts/setup_env.sh tf115-horovod  # tf115 + Horovod 0.28.1 built from source
#                                       # (Gloo, no MPI; needs cmake and g++)
#
# Environments live under ${GLOW_VENV_ROOT:-$HOME/.cache/glow-venvs}, keyed by
# the stack and the hash of the requirement files, so a rerun with unchanged
# requirements installs nothing. All progress goes to stderr; stdout is the path.
set -euo pipefail
stack=${1:-tf2}
here=$(cd "$(dirname "$0")/.." && pwd)
root=${GLOW_VENV_ROOT:-$HOME/.cache/glow-venvs}

case "$stack" in
  tf2)
    py=${GLOW_PYTHON_TF2:-}
    if [ -z "$py" ]; then
      if command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.11.7 >/dev/null 2>&1; then
        py="$(pyenv prefix 3.11.7)/bin/python"
      else
        py=$(command -v python3)
      fi
    fi ;;
  tf115|tf115-horovod)
    py=${GLOW_PYTHON_TF115:-}
    if [ -z "$py" ]; then
      if ! command -v pyenv >/dev/null 2>&1 || ! pyenv prefix 3.7.16 >/dev/null 2>&1; then
        echo "setup_env.sh: the tf115 stack needs Python 3.7 (pyenv install 3.7.16, or set GLOW_PYTHON_TF115)" >&2
        exit 2
      fi
      py="$(pyenv prefix 3.7.16)/bin/python"
    fi ;;
  *) echo "setup_env.sh: unknown stack '$stack' (expected tf2, tf115 or tf115-horovod)" >&2; exit 2 ;;
esac

reqs=("$here/requirements.txt" "$here/requirements-dev.txt")
if [ "$stack" = tf115-horovod ]; then
  reqs+=("$here/requirements-horovod.txt")
fi
key=$(cat "${reqs[@]}" | sha256sum | cut -c1-16)
venv="$root/$stack-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "setup_env.sh: building $venv with $py" >&2
  rm -rf "$venv"
  mkdir -p "$root"
  "$py" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade "pip<24.1" >&2
  "$venv/bin/python" -m pip install -q -r "$here/requirements.txt" -r "$here/requirements-dev.txt" >&2
  if [ "$stack" = tf115-horovod ]; then
    # Built from source against the TensorFlow just installed (hence no build
    # isolation), and not from pip's wheel cache, which may hold a build made
    # against another TensorFlow. Gloo only: `horovodrun --gloo` needs no MPI.
    echo "setup_env.sh: building horovod (a few minutes)" >&2
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      "$venv/bin/python" -m pip install -q --no-build-isolation --no-cache-dir \
      -r "$here/requirements-horovod.txt" >&2
    "$venv/bin/python" -c "import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'horovod built without Gloo'" >&2
  fi
  touch "$venv/.complete"
fi
echo "$venv"
