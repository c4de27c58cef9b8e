"""Checkpoints and the run state they carry.

A checkpoint holds weights, optimizer state and two JSON strings: `run/config`, the run's config (its architecture
fields rebuild the model: a run folder describes itself), and `run/state`, the `RunState`, saved and restored with the
weights as one thing. A run folder keeps checkpoints/ (the latest two) and best/ (the best test loss); TF rewrites each
folder's `checkpoint` index atomically after the files, so a crash mid-save leaves the previous checkpoint in force.
"""
import errno
import glob
import json
import os
import shutil

import numpy as np
import tensorflow.compat.v1 as tf

import stacked
import utils

CONFIG_KEY = "run/config"
STATE_KEY = "run/state"
UPGRADE = "upgrade its run folder: python scripts/upgrade_run.py FOLDER"  # (checkpoints of older versions)


class RunState(object):
    """Where a run is: `step` (training steps done), `epoch` (epochs finished), `n_processed` (images at
    --anchor_size, openai/glow's progress measure), `lr_scale` (lowered by each recovery from non-finite steps),
    `loss_scale` (the current loss scale), `best_test` (best test loss so far, of the weights best/ follows)."""

    FIELDS = ("step", "epoch", "n_processed", "lr_scale", "loss_scale", "best_test")

    def __init__(self, step=0, epoch=0, n_processed=0, lr_scale=1.0, loss_scale=1.0, best_test=float("inf")):
        self.step, self.epoch, self.n_processed = int(step), int(epoch), int(n_processed)
        self.lr_scale, self.loss_scale, self.best_test = float(lr_scale), float(loss_scale), float(best_test)

    def as_dict(self):
        return dict((k, getattr(self, k)) for k in self.FIELDS)

    def to_json(self):
        return utils.dumps_strict(self.as_dict(), "run state")

    @classmethod
    def from_json(cls, text):
        return cls(**dict((k, float(v) if isinstance(v, str) else v) for k, v in json.loads(text).items()))


def latest(folder, skipped=None):
    """The newest readable checkpoint prefix in `folder` or its checkpoints/ or best/ (a run folder); None if there
    is none. A checkpoint that cannot be read whole (a truncated or corrupt file, `unreadable`) is passed over for
    the one before it, and (prefix, why) appended to the list `skipped`; if every one listed is unreadable, a
    ValueError names them."""
    folder = os.path.abspath(folder)  # TF gives the checkpoints' paths joined to it: absolute, whatever the cwd
    for path in (folder, os.path.join(folder, "checkpoints"), os.path.join(folder, "best")):
        state = tf.train.get_checkpoint_state(path) if os.path.isdir(path) else None
        if state is None or not state.model_checkpoint_path:
            continue
        listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        if state.model_checkpoint_path not in listed:
            listed.append(state.model_checkpoint_path)
        bad = []
        for prefix in reversed(listed):  # newest first
            why = unreadable(prefix)
            if why is None:
                if skipped is not None:
                    skipped.extend(bad)
                return prefix
            bad.append((prefix, why))
        raise ValueError("no readable checkpoint in %s: %s" % (path, "; ".join("%s (%s)" % b for b in bad)))
    return None


def unreadable(prefix):
    """Why checkpoint `prefix` cannot be restored (missing or truncated files, a checksum that does not match: every
    tensor is read, which checks each one's CRC), or None if it can."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, IndexError, ValueError, OSError) as e:
        return (getattr(e, "message", None) or str(e) or type(e).__name__).split("\n")[0]
    return None


def resolve(path, skipped=None):
    """A checkpoint prefix from a prefix (it must be readable) or a folder (its newest readable checkpoint; see
    `latest` for `skipped`)."""
    if os.path.isdir(path):
        prefix = latest(path, skipped)
        if prefix is None:
            raise ValueError("%s: no checkpoint in this folder (nor in its checkpoints/ or best/)" % path)
        return prefix
    if not tf.train.checkpoint_exists(path):
        raise ValueError("%s: no such checkpoint (expected a run folder or a prefix like "
                         "logs/checkpoints/model.ckpt-1000 with its .index file)" % path)
    why = unreadable(path)
    if why is not None:
        raise ValueError("checkpoint %s cannot be read: %s" % (path, why))
    return path


class DiskFull(RuntimeError):
    """No space left to save where a run writes: the message says where, how much is free and what to do."""


def with_room(write, make_room, folder, needed, clean_up=lambda: None):
    """write(); if the device is full (an OSError or a TensorFlow op error saying so): clean_up(), make_room() and
    write() once more. A DiskFull (free space and needed(), bytes, into `folder`) if no room was made or it fails
    again."""
    for attempt in (1, 2):
        try:
            return write()
        except (tf.errors.OpError, OSError) as e:
            if getattr(e, "errno", None) != errno.ENOSPC and "No space left on device" not in str(e):
                raise
            clean_up()
            if attempt == 2 or not make_room():
                free = shutil.disk_usage(folder).free if os.path.isdir(folder) else 0
                raise DiskFull("no space left on the device of %s (%.1f MB free, about %.1f MB needed; %s): free "
                               "some space, then continue with --resume"
                               % (folder, free / 1e6, needed() / 1e6, str(e).split("\n")[0])) from e


def saved_config(prefix):
    """The run config a checkpoint was written with (a dict), or None for one written before checkpoints carried it
    (scripts/upgrade_run.py adds it)."""
    reader = tf.train.load_checkpoint(prefix)
    return json.loads(tf.compat.as_text(reader.get_tensor(CONFIG_KEY))) if reader.has_tensor(CONFIG_KEY) else None


class Checkpoints(object):
    """The savers of one graph and its run/config and run/state variables; build it after every other variable."""

    def __init__(self, config_json):
        with tf.variable_scope("run"):
            self._config = tf.get_variable("config", initializer=tf.constant(config_json), trainable=False)
            self._state = tf.get_variable("state", initializer=tf.constant(RunState().to_json()), trainable=False)
        self.config_json = config_json
        self._feed = tf.placeholder(tf.string, [])
        self._set_config = self._config.assign(config_json)
        self._assign = tf.group(self._state.assign(self._feed), self._set_config)
        self.saver = tf.train.Saver(max_to_keep=2, save_relative_paths=True)
        # best/ keeps one: the same save/restore ops, another max_to_keep.
        best_def = tf.train.SaverDef()
        best_def.CopyFrom(self.saver.as_saver_def())
        best_def.max_to_keep = 1
        self.best_saver = tf.train.Saver(saver_def=best_def, save_relative_paths=True)
        self.shapes = dict((v.op.name, v.get_shape().as_list()) for v in tf.global_variables())

    def save(self, sess, logdir, state, best=False):
        """Save weights and `state` (a RunState) as logdir/{checkpoints,best}/model.ckpt-<step>; returns the prefix.
        On a full disk the files of the failed save are removed, room is made (make_room) and the save is tried
        once more; then a DiskFull says what to do. The newest complete checkpoint is never touched."""
        sess.run(self._assign, {self._feed: state.to_json()})
        folder = os.path.join(logdir, "best" if best else "checkpoints")
        saver = self.best_saver if best else self.saver
        target = os.path.join(folder, "model.ckpt")
        prefix = "%s-%d" % (target, state.step)
        # Saved at this step already: keep its files. (TF 1.15's check raises where the folder does not exist.)
        complete_before = os.path.isdir(folder) and tf.train.checkpoint_exists(prefix)
        return with_room(lambda: saver.save(sess, target, global_step=state.step, write_meta_graph=False),
                         lambda: self.make_room(logdir), folder, lambda: self.size(logdir),
                         lambda: _remove_partial(prefix, keep_final=complete_before))

    def make_room(self, logdir):
        """Delete the older of the two checkpoints kept in logdir/checkpoints (never the newest). True if one was."""
        kept = [p for p in self.saver.last_checkpoints if tf.train.checkpoint_exists(p)]
        if len(kept) < 2:
            return False
        tf.train.remove_checkpoint(kept[0])
        self.saver.recover_last_checkpoints(kept[1:])
        return True

    def size(self, logdir):
        """Bytes of the newest checkpoint in logdir/checkpoints (its data and index files), else of the variables."""
        newest = self.saver.last_checkpoints[-1:] or [tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))]
        files = glob.glob(newest[0] + ".*") if newest[0] else []
        return sum(os.path.getsize(f) for f in files) or sum(
            4 * int(np.prod(shape)) for shape in self.shapes.values() if shape is not None)

    def restore(self, sess, prefix):
        """Load checkpoint `prefix` into the graph's variables (check_holds says what it must hold). Returns its
        RunState."""
        check_holds(prefix, self.shapes)
        self.saver.restore(sess, prefix)
        sess.run(self._set_config)
        return read_state(prefix)

    def adopt(self, logdir):
        """Count the checkpoints an earlier run left in logdir as this run's own, so that saving prunes them too
        (a Saver prunes only what it wrote). Only on --resume: a new run must not delete what it did not write."""
        for saver, sub in ((self.saver, "checkpoints"), (self.best_saver, "best")):
            found = tf.train.get_checkpoint_state(os.path.join(logdir, sub))
            if found is not None:
                saver.recover_last_checkpoints(list(found.all_model_checkpoint_paths))


def _remove_partial(prefix, keep_final=False):
    """The files a failed save of `prefix` may have left: TF writes <prefix>_temp.../, then merges it into
    <prefix>.* (kept with keep_final: a complete checkpoint of the same name from before)."""
    for path in ([] if keep_final else glob.glob(prefix + ".*")) + glob.glob(prefix + "_temp*"):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


def read_state(prefix):
    """The RunState a checkpoint carries."""
    reader = tf.train.load_checkpoint(prefix)
    if not reader.has_tensor(STATE_KEY):
        raise ValueError("checkpoint %s carries no run state (written before checkpoints did): %s" % (prefix, UPGRADE))
    return RunState.from_json(tf.compat.as_text(reader.get_tensor(STATE_KEY)))


class ModelWeights(object):
    """The restore of a graph that only uses the model: `variables` (its weights and their averages) from a
    checkpoint that may hold more. What `left_out(key)` accepts (the optimizer's state) and the run/ strings are
    left out on purpose; any other variable missing or extra is an error naming it, as for Checkpoints."""

    def __init__(self, variables, left_out):
        self.saver = tf.train.Saver(var_list=list(variables), save_relative_paths=True)
        self.shapes = dict((v.op.name, v.get_shape().as_list()) for v in variables)
        self.left_out = lambda key: key.startswith("run/") or left_out(key)

    def restore(self, sess, prefix):
        """Load checkpoint `prefix`; returns its RunState."""
        check_holds(prefix, self.shapes, self.left_out)
        self.saver.restore(sess, prefix)
        return read_state(prefix)


def check_holds(prefix, shapes, left_out=None):
    """A ValueError naming what is wrong unless checkpoint `prefix` holds the variables `shapes` ({key: shape}, a
    graph's saver keys) with those shapes, and no variable this model has no use for (written with other flags: a
    smaller model must not load part of it and train on) that `left_out(key)` does not accept."""
    have = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    missing = [key for key in sorted(shapes) if key not in have]
    missing += ["%s (shape %s in the checkpoint, %s here)" % (key, list(have[key]), shape)
                for key, shape in sorted(shapes.items()) if key in have and list(have[key]) != list(shape)]
    if missing:
        old = "/%s/" % stacked.STEP_SCOPE  # none in checkpoints from before the flow steps' variables were stacked
        hint = (" (if it was written by an older version: %s)" % UPGRADE if CONFIG_KEY not in have or (
            any(old in k for k in missing) and not any(old in k for k in have)) else "")
        raise ValueError("checkpoint %s does not hold %d of this model's variables, e.g. %s: it was written by a "
                         "model with other flags%s" % (prefix, len(missing), ", ".join(missing[:3]), hint))
    unused = sorted(k for k in have if k not in shapes and not (left_out and left_out(k)))
    if unused:
        raise ValueError("checkpoint %s holds %d variables this model does not have, e.g. %s: it was written by a "
                         "model with other flags" % (prefix, len(unused), ", ".join(unused[:3])))


def write_values(values, path):
    """A checkpoint of {key: NumPy value} at `path` (its .index and .data files), through its own graph; returns
    path."""
    keys = sorted(values)
    with tf.Graph().as_default():
        holders = [tf.placeholder(tf.string if values[k].dtype.kind in "OSU" else tf.as_dtype(values[k].dtype))
                   for k in keys]
        save = tf.raw_ops.SaveV2(prefix=path, tensor_names=keys, shape_and_slices=[""] * len(keys), tensors=holders)
        with tf.Session() as sess:
            sess.run(save, dict(zip(holders, [values[k] for k in keys])))
    return path

