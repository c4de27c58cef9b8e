#!/usr/bin/env bash
# Train on the NPUs of one bare Ascend server: one train.py process per device.
#
#   scripts/launch_ascend.sh 1 - --problem cifar10 ...                 # one NPU
#   scripts/launch_ascend.sh 8 /path/rank_table_8p.json --problem cifar10 ...
#
# Each process gets RANK_SIZE, RANK_ID, ASCEND_DEVICE_ID (= DEVICE_ID = rank)
# and, with several devices, RANK_TABLE_FILE (the HCCL rank table of this
# server, made with Ascend's hccl_tools), and runs with --device npu (and
# --backend hccl with several devices). Output of rank i goes to
# ${LAUNCH_LOGDIR:-./launch_logs}/rank_i.log. Exits non-zero if any rank failed.
# PYTHON (default: python) is the interpreter of the CANN TF 1.15 environment.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N_DEVICES RANK_TABLE_FILE|- [train.py flags ...]" >&2; exit 2
fi
n=$1; table=$2; shift 2
case "$n" in ''|*[!0-9]*) echo "$0: N_DEVICES '$n' is not a number" >&2; exit 2;; esac
if [ "$n" -lt 1 ]; then echo "$0: N_DEVICES must be >= 1" >&2; exit 2; fi
backend=none
if [ "$n" -gt 1 ]; then
  if [ ! -f "$table" ]; then echo "$0: rank table '$table' not found (needed for $n devices)" >&2; exit 2; fi
  export RANK_TABLE_FILE=$(cd "$(dirname "$table")" && pwd)/$(basename "$table")
  backend=hccl
fi
here=$(cd "$(dirname "$0")/.." && pwd)
logs=${LAUNCH_LOGDIR:-./launch_logs}
mkdir -p "$logs"
export RANK_SIZE=$n
pids=()
for ((i = 0; i < n; i++)); do
  RANK_ID=$i ASCEND_DEVICE_ID=$i DEVICE_ID=$i \
    "${PYTHON:-python}" "$here/train.py" --device npu --backend "$backend" "$@" > "$logs/rank_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "$0: rank $i failed, see $logs/rank_$i.log" >&2
    status=1
  fi
done
exit $status
