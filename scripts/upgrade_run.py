#!/usr/bin/env python
"""Upgrade run folders written by older versions to the checkpoints of this one.

    python scripts/upgrade_run.py FOLDER [FOLDER ...]

What changed: the flow steps' variables are stacked (stacked.py): step i of level l had variables of its own
(model/<l>/<i>/actnorm/b, and so its optimizer slots and Polyak averages, optim/model/<l>/<i>/...), now each is row i
of model/<l>/step/actnorm/b. Before that, checkpoints came to carry their run config (run/config, which older runs
kept only as the first line of their train.txt) and their run state as one JSON string (run/state, which older ones
kept as run/epoch, run/n_processed, run/lr_scale, run/best_test and the step in the file name). Every checkpoint
under each FOLDER (a run folder's checkpoints/ and best/, a packed run, a checkpoint folder) that is older is
rewritten in place with the same values: the new files are written beside the old, the old are moved aside as
*.before-upgrade, the new put in their place, and the old deleted. A current checkpoint is left alone. The only place
that knows the old formats.
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
import utils  # noqa: E402

# An old per-step key: <...>/<level>/<step>/<name in the step>, e.g. optim/model/0/3/actnorm/b/m.
OLD_STEP_KEY = re.compile(r"^(.*?/\d+)/(\d+)/(.+)$")
OLD_STATE_KEYS = dict(("run/" + field, field) for field in ("epoch", "n_processed", "lr_scale", "best_test"))


def with_run_strings(values, prefix):
    """{key: value} of checkpoint `prefix` with run/config (its run folder's train.txt's first line) and run/state
    (from the old run/<field> variables and the step in its name) where it has none."""
    out = dict((k, v) for k, v in values.items() if k not in OLD_STATE_KEYS)
    if checkpoints.CONFIG_KEY not in values:
        log = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(prefix))), "train.txt")
        lines = utils.read_jsonl(log, skip_invalid=True) if os.path.exists(log) else []
        if not lines:
            raise ValueError("%s carries no run config, and there is no train.txt beside its folder to take it from"
                             % prefix)
        out[checkpoints.CONFIG_KEY] = np.asarray(utils.dumps_strict(lines[0], "config").encode("utf-8"))
    if checkpoints.STATE_KEY not in values:
        step = prefix.rsplit("-", 1)[-1]
        state = checkpoints.RunState(step=int(step) if step.isdigit() else 0, **dict(
            (field, values[key].item()) for key, field in OLD_STATE_KEYS.items() if key in values))
        out[checkpoints.STATE_KEY] = np.asarray(state.to_json().encode("utf-8"))
    return out


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
    """Rewrite checkpoint `prefix` as this version writes it; True if it had to be."""
    reader = tf.train.load_checkpoint(prefix)
    values = dict((k, np.asarray(reader.get_tensor(k))) for k in reader.get_variable_to_shape_map())
    new = stacked_values(with_run_strings(values, prefix))
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
            print("%s: %s" % (prefix, "upgraded" if upgrade(prefix) else "already current"))
    return 0


if __name__ == "__main__":
    raise SystemExit(trained_run.main(main))
