#!/usr/bin/env python
"""Upgrade run folders written before the flow steps' variables were stacked (stacked.py) to the one layout.

    python scripts/upgrade_run.py FOLDER [FOLDER ...]

Before, step i of level l had variables of its own (model/<l>/<i>/actnorm/b, and so its optimizer slots and Polyak
averages, optim/model/<l>/<i>/...); now each is row i of model/<l>/step/actnorm/b. Every checkpoint under each
FOLDER (a run folder's checkpoints/ and best/, a packed run, a checkpoint folder) that holds per-step variables is
rewritten in place with the same values: the new files are written beside the old, the old are moved aside as
*.before-upgrade, the new put in their place, and the old deleted. A checkpoint that is already stacked (every run
since, and --loop_steps runs before) is left alone. The only place that knows the old layout.
"""
import argparse
import collections
import glob
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import stacked  # noqa: E402
import trained_run  # noqa: E402

# An old per-step key: <...>/<level>/<step>/<name in the step>, e.g. optim/model/0/3/actnorm/b/m.
OLD_STEP_KEY = re.compile(r"^(.*?/\d+)/(\d+)/(.+)$")


def stacked_values(values):
    """{key: value} of an old checkpoint -> the same with every step variable stacked ({key: value} unchanged if it
    has none). A level whose steps are not 0..depth-1 is a ValueError naming it."""
    rows, out = collections.defaultdict(dict), {}
    for key, value in values.items():
        match = OLD_STEP_KEY.match(key)
        if match is None:
            out[key] = value
        else:
            rows["%s/%s/%s" % (match.group(1), stacked.STEP_SCOPE, match.group(3))][int(match.group(2))] = value
    for key, by_step in rows.items():
        if sorted(by_step) != list(range(len(by_step))):
            raise ValueError("%s: steps %s found, expected 0..%d" % (key, sorted(by_step), len(by_step) - 1))
        out[key] = np.stack([by_step[i] for i in range(len(by_step))])
    return out


def upgrade(prefix):
    """Rewrite checkpoint `prefix` in the stacked layout; True if it had to be."""
    reader = tf.train.load_checkpoint(prefix)
    values = dict((k, np.asarray(reader.get_tensor(k))) for k in reader.get_variable_to_shape_map())
    new = stacked_values(values)
    if sorted(new) == sorted(values):
        return False
    files = glob.glob(prefix + ".index") + glob.glob(prefix + ".data-*")
    checkpoints.write_values(new, prefix + ".upgraded")
    for path in files:
        os.replace(path, path + ".before-upgrade")
    for path in glob.glob(prefix + ".upgraded.*"):
        os.replace(path, prefix + path[len(prefix + ".upgraded"):])
    for path in files:
        os.remove(path + ".before-upgrade")
    return True


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="a run folder (or any folder of checkpoints)")
    args = parser.parse_args(argv)
    tf.logging.set_verbosity(tf.logging.ERROR)
    for folder in args.folders:
        if not os.path.isdir(folder):
            raise ValueError("%s: not a folder" % folder)
        prefixes = sorted(p[:-len(".index")] for p in glob.glob(os.path.join(folder, "**", "*.index"), recursive=True)
                          if not p.endswith(".upgraded.index"))
        if not prefixes:
            raise ValueError("%s: no checkpoint in this folder or under it" % folder)
        for prefix in prefixes:
            print("%s: %s" % (prefix, "upgraded" if upgrade(prefix) else "already stacked"))
    return 0


if __name__ == "__main__":
    raise SystemExit(trained_run.main(main))
