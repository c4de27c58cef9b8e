#!/usr/bin/env python
"""A trained run folder packed as a model to hand on: OUT/checkpoints/ holds one checkpoint's weights and their
Polyak averages without the optimizer's state (a third of its size: to use the model, not to resume its
training), beside the run's logs (train.txt, test.txt, and test_bits_per_image.csv if --evaluate --per_image wrote
one). OUT is a run folder that train.py's modes (--evaluate, --sample, --inference, --export) and the tools in
scripts/ accept as they accept the run.

    python scripts/pack_run.py LOGDIR OUT [--checkpoint PREFIX_OR_FOLDER]
"""
import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import optim  # noqa: E402
import trained_run  # noqa: E402

LOGS = ("train.txt", "test.txt", "test_bits_per_image.csv")


def write_model_only(prefix, folder, left_out=optim.is_state):
    """A copy of checkpoint `prefix` without the keys `left_out` accepts (the optimizer's state), as
    folder/model.ckpt-<step> with its `checkpoint` index: a checkpoint to use a model, not to resume its training.
    Returns the new prefix."""
    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k in reader.get_variable_to_shape_map() if not left_out(k)]
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(os.path.abspath(folder), os.path.basename(prefix))
    checkpoints.write_values(dict((k, np.asarray(reader.get_tensor(k))) for k in keys), out)
    name = os.path.basename(out)  # relative to the folder, which can then move (TF keeps it so for an absolute one)
    tf.train.update_checkpoint_state(os.path.abspath(folder), name, all_model_checkpoint_paths=[name])
    return out


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logdir", help="a trained run folder (train.py's --logdir)")
    parser.add_argument("out", help="the new run folder (must not exist)")
    parser.add_argument("--checkpoint", default="", help="a checkpoint prefix or folder (default: the latest in "
                                                         "LOGDIR/checkpoints)")
    args = parser.parse_args(argv)
    tf.logging.set_verbosity(tf.logging.ERROR)
    if os.path.exists(args.out):
        raise ValueError("%s exists: give a new folder" % args.out)
    prefix = checkpoints.resolve(args.checkpoint or os.path.join(args.logdir, "checkpoints"))
    if checkpoints.saved_config(prefix) is None:
        raise ValueError("%s carries no run config (written by an older version): %s" % (prefix, checkpoints.UPGRADE))
    packed = write_model_only(prefix, os.path.join(args.out, "checkpoints"))
    for name in LOGS:
        if os.path.exists(os.path.join(args.logdir, name)):
            shutil.copyfile(os.path.join(args.logdir, name), os.path.join(args.out, name))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    print("packed %s -> %s (%.1f MB with its logs)" % (prefix, packed, size / 1e6))
    return 0


if __name__ == "__main__":
    raise SystemExit(trained_run.main(main))
