#!/usr/bin/env python
"""Entry script for a ModelArts training job (Ascend, TensorFlow 1.15 image).

Set it as the job's boot file; ModelArts passes --data_url and --train_url
(and may add arguments of its own, which train.py reports and ignores). Any
train.py flag can be added to the job's parameters. Defaults here, unless
given: --device npu, --logdir /cache/glow_logs (the job's local disk), and
--backend auto (HCCL when the job has several NPUs: ModelArts sets RANK_SIZE,
RANK_ID and the rank table). Logs, checkpoints and samples are copied to
--train_url at every checkpoint and at the end.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402

DEFAULTS = (("--device", "npu"), ("--logdir", "/cache/glow_logs"))


def with_defaults(argv):
    """argv with DEFAULTS added where the flag is not given (as --flag v or --flag=v)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    extra = []
    for flag, value in DEFAULTS:
        if flag not in given:
            extra += [flag, value]
    return extra + list(argv)


if __name__ == "__main__":
    sys.exit(train.cli(with_defaults(sys.argv[1:])))
