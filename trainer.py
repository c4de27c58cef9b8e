"""The training graph of train.py and what runs it: init, one step,
evaluation, sampling, encoding, checkpoints.

One `Trainer` builds, once, every graph a run needs on one set of weights:
the data-dependent init, the training step (gradients averaged over ranks,
Adam/Adamax, Polyak average, skipped when non-finite), and evaluation,
sampling and encoding graphs that read either the raw weights (the paper's
and openai/glow's test bits/dim) or their Polyak averages, as fed
(`weights`: "raw" or "polyak"). The loop itself lives in train.py.
"""
import os
import shutil
import tempfile

import numpy as np
import tensorflow.compat.v1 as tf

import memory_saving_gradients
import model as glow_model
import optim

# The per-example statistics of training and evaluation, in this order
# wherever they travel as an array, and their names in the logs (openai/glow's).
STATS = ("loss", "bits_x", "bits_y", "pred_loss")
WEIGHTS = ("raw", "polyak")


def _check_weights(weights):
    if weights not in WEIGHTS:
        raise ValueError("weights %r: expected one of %s" % (weights, ", ".join(WEIGHTS)))
    return weights == "polyak"


class Trainer(object):
    """Graph and session of one run. cfg: the frozen config of config.py."""

    def __init__(self, cfg, backend, session_factory):
        self.cfg = cfg
        self.backend = backend
        self.glow = glow_model.Glow.from_config(cfg)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(backend.rank_seed(cfg.seed))
            self._build()
            self.graph.finalize()
        self.sess = session_factory(self.graph)

    # -- graph ---------------------------------------------------------------

    def _inputs(self, name, batch):
        """uint8 images and int32 labels. On the NPU every graph gets a static
        batch size (the Ascend compiler wants static shapes; shorter batches
        are padded, see _padded); elsewhere the batch dimension is free."""
        h, w, c = self.cfg.image_shape
        n = batch if self.static_shapes else None
        return (tf.placeholder(tf.uint8, [n, h, w, c], name="x_" + name),
                tf.placeholder(tf.int32, [n], name="y_" + name))

    def _build(self):
        cfg, glow = self.cfg, self.glow
        self.static_shapes = cfg.device == "npu"
        self.x_init, self.y_init = self._inputs("init", cfg.local_batch_init)
        self.x, self.y = self._inputs("train", cfg.local_batch_train)
        self.x_test, self.y_test = self._inputs("test", cfg.local_batch_test)
        self.y_sample = self._inputs("sample", cfg.local_batch_train)[1]
        self.lr = tf.placeholder(tf.float32, [], name="lr")
        # Loss scaling for reduced precision (NPU mixed precision): the loss is
        # multiplied before backprop and the gradients divided after, so small
        # gradients survive float16. 1 (the default) changes nothing.
        self.loss_scale = tf.placeholder_with_default(tf.constant(1.0), [], name="loss_scale")

        self.init_loss = glow.init_op(self.x_init, self.y_init)
        stats = glow.losses(self.x, self.y, checkpointing=cfg.gradient_checkpointing)
        loss = tf.reduce_mean(stats["loss"])
        params = tf.trainable_variables()
        grads = memory_saving_gradients.gradients(loss * self.loss_scale, params, mode=cfg.gradient_checkpointing)
        grads = [None if g is None else g / self.loss_scale for g in grads]
        grads = self.backend.allreduce_mean(grads)

        with tf.variable_scope("run"):
            # Run state, saved with the weights so --resume continues exactly.
            self.epoch = tf.get_variable("epoch", [], tf.int64, tf.zeros_initializer(), trainable=False)
            self.n_processed = tf.get_variable("n_processed", [], tf.int64, tf.zeros_initializer(),
                                               trainable=False)
            self.lr_scale = tf.get_variable("lr_scale", [], tf.float32, tf.ones_initializer(), trainable=False)
            self.best_test = tf.get_variable("best_test", [], tf.float32,
                                             tf.constant_initializer(np.inf), trainable=False)
        self.opt = optim.make_train_op(cfg.optimizer, params, grads, self.lr * self.lr_scale, cfg.beta1,
                                       cfg.beta2, weight_decay=cfg.weight_decay, loss=loss)
        self.train_stats = self._mean_stats(stats)
        # Evaluation, sampling and encoding read the raw weights or their
        # Polyak averages, as fed: one copy of each graph serves both (each
        # copy of the flow in the graph costs memory, docs/BENCHMARKS.md).
        self.use_polyak = tf.placeholder_with_default(False, [], name="use_polyak")
        ema = self.opt.ema.getter(self.use_polyak)

        # One encoding of the test batch serves evaluation and `encode`; the
        # dequantisation noise is fed: draws fixed by each image's index
        # (dequantization_noise) for evaluation, so both weightings and any
        # re-evaluation see the same noise; the centre of each bin for
        # `encode` (decoding it must give back the same integers).
        self.noise_test = tf.placeholder(glow.dtype, self.x_test.get_shape(), name="noise_test")
        eval_stats, enc = glow.stats(glow.preprocess(self.x_test) + self.noise_test, self.y_test, custom_getter=ema)
        self.eval_per_example = [eval_stats[k] for k in STATS]

        self.temperature = tf.placeholder(tf.float32, [None], name="temperature")
        self.samples = glow.sample(self.y_sample, self.temperature, custom_getter=ema)

        n = tf.shape(self.x_test)[0]
        self.z_flat = tf.concat([tf.reshape(e, [n, -1]) for e in enc.eps], axis=1)
        self.x_decoded = glow.postprocess(glow.decode(enc.eps, self.y_test, custom_getter=ema))

        self.gather_in = tf.placeholder(tf.float32, [None], name="gather_in")
        self.gather_out = self.backend.allreduce_mean(self.gather_in) * float(self.backend.size())

        float_vars = [v for v in tf.global_variables() if v.dtype.base_dtype.is_floating]
        self.all_finite = tf.reduce_all(tf.stack(
            [tf.reduce_all(tf.is_finite(v)) for v in float_vars if v is not self.best_test]))
        self.broadcast = self.backend.broadcast_variables(tf.global_variables())
        self.global_init = tf.global_variables_initializer()
        self.saver = tf.train.Saver(max_to_keep=2, save_relative_paths=True)
        self.saved_shapes = dict((v.op.name, v.get_shape().as_list()) for v in tf.global_variables())
        # The best checkpoint's saver runs the same save/restore ops (a second
        # Saver would build its own, a few per variable); only what it keeps
        # on disk differs.
        best_def = tf.train.SaverDef()
        best_def.CopyFrom(self.saver.as_saver_def())
        best_def.max_to_keep = 1
        self.best_saver = tf.train.Saver(saver_def=best_def, save_relative_paths=True)

    def _mean_stats(self, stats):
        local = tf.stack([tf.reduce_mean(stats[k]) for k in STATS])
        return self.backend.allreduce_mean(local)

    # -- setup -----------------------------------------------------------------

    def initialize(self, x_init, y_init):
        """Fresh weights: variable initialisers, data-dependent init on one
        batch per rank, rank 0's weights broadcast to all (so every rank starts
        from rank 0's init statistics), then the Polyak average seeded from
        them."""
        self.sess.run(self.global_init)
        self.sess.run(self.init_loss, {self.x_init: x_init, self.y_init: y_init})
        self.sess.run(self.broadcast)
        self.sess.run(self.opt.ema.seed_op)

    def restore(self, path):
        """Restore a checkpoint (a prefix, or a folder holding one) and make all
        ranks equal to rank 0."""
        prefix = resolve_checkpoint(path)
        self.sess.run(self.global_init)
        scratch = tempfile.mkdtemp(prefix="glow-restore-")
        try:
            self.saver.restore(self.sess, checkpoint_in_layout(prefix, self.saved_shapes, scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.sess.run(self.broadcast)
        return prefix

    def adopt_checkpoints(self, logdir):
        """Count the checkpoints an earlier run left in logdir/checkpoints and
        logdir/best as this run's own: a Saver only prunes what it wrote, so
        without this a resumed run would keep max_to_keep more on disk at
        every restart. Call it on resume (a fresh run in the same folder
        must not delete what it did not write)."""
        for saver, sub in ((self.saver, "checkpoints"), (self.best_saver, "best")):
            state = tf.train.get_checkpoint_state(os.path.join(logdir, sub))
            if state is not None:
                saver.recover_last_checkpoints(list(state.all_model_checkpoint_paths))

    def state(self):
        epoch, n_processed, lr_scale, best = self.sess.run(
            [self.epoch, self.n_processed, self.lr_scale, self.best_test])
        return {"epoch": int(epoch), "n_processed": int(n_processed), "lr_scale": float(lr_scale),
                "best_test": float(best)}

    def set_state(self, **values):
        for name, value in values.items():
            getattr(self, name).load(value, self.sess)

    # -- steps -------------------------------------------------------------------

    def train_step(self, x, y, lr, loss_scale=1.0):
        """One step. Returns (applied, the batch's mean STATS)."""
        _, applied, stats = self.sess.run([self.opt.train_op, self.opt.grads_finite, self.train_stats],
                                          {self.x: x, self.y: y, self.lr: lr, self.loss_scale: loss_scale})
        return bool(applied), stats

    def n_skipped(self):
        return int(self.sess.run(self.opt.n_skipped))

    def eval_per_image(self, batches, first_index=0, n_draws=1, weights="raw"):
        """Per-image STATS [4, n] of `batches` (in order; their first image
        is test image `first_index`) with the `weights` ("raw" or "polyak"),
        each the mean over n_draws dequantisation draws (the same draws for
        both weightings: dequantization_noise)."""
        use_polyak = _check_weights(weights)
        out, index = [], first_index
        for x, y in batches:
            per_example = np.zeros((len(STATS), len(x)))
            for draw in range(n_draws):
                noise = dequantization_noise(range(index, index + len(x)), draw, x.shape[1:], self.glow.n_bins)
                feed = self._padded({self.x_test: x, self.y_test: y, self.noise_test: noise},
                                    self.cfg.local_batch_test)
                feed[self.use_polyak] = use_polyak
                per_example += np.array(self.sess.run(self.eval_per_example, feed))[:, :len(x)] / n_draws
            out.append(per_example)
            index += len(x)
        return np.concatenate(out, axis=1) if out else np.zeros((len(STATS), 0))

    def gather(self, local, start, n_total):
        """Every rank's rows [k, n_r] of a [k, n_total] array, rank r's at
        columns start_r.., joined on every rank (a summing allreduce of
        arrays that are zero outside each rank's own columns)."""
        full = np.zeros((local.shape[0], n_total), np.float32)
        full[:, start:start + local.shape[1]] = local
        if self.backend.size() == 1:
            return full
        return self.sess.run(self.gather_out, {self.gather_in: full.ravel()}).reshape(full.shape)

    def sample(self, y, temperatures, weights="raw"):
        """Images for labels y [B] at per-image temperatures [B]; any B."""
        n = self.cfg.local_batch_train
        use_polyak = _check_weights(weights)
        out = []
        for i in range(0, len(y), n):
            feed = self._padded({self.y_sample: y[i:i + n], self.temperature: temperatures[i:i + n]}, n)
            feed[self.use_polyak] = use_polyak
            out.append(self.sess.run(self.samples, feed))
        return np.concatenate(out)[:len(y)]

    def encode(self, x, y, weights="raw"):
        """(z [B, D] flattened eps of every level, x decoded back from z)."""
        centre = np.full(x.shape, 0.5 / self.glow.n_bins, self.glow.dtype.as_numpy_dtype)
        feed = self._padded({self.x_test: x, self.y_test: y, self.noise_test: centre}, self.cfg.local_batch_test)
        feed[self.use_polyak] = _check_weights(weights)
        z, x_back = self.sess.run([self.z_flat, self.x_decoded], feed)
        return z[:len(x)], x_back[:len(x)]

    def _padded(self, feed, batch):
        """With static shapes, pad every array of a short batch to `batch` by
        repeating its last entry; callers keep only the first len() results."""
        if not self.static_shapes:
            return feed
        out = {}
        for key, value in feed.items():
            value = np.asarray(value)
            if len(value) > batch:
                raise ValueError("batch of %d for a graph of static batch %d" % (len(value), batch))
            pad = np.repeat(value[-1:], batch - len(value), axis=0)
            out[key] = np.concatenate([value, pad]) if len(pad) else value
        return out

    def weights_finite(self):
        return bool(self.sess.run(self.all_finite))

    # -- checkpoints ---------------------------------------------------------------

    def save(self, logdir, step, best=False):
        """Write a checkpoint under logdir/checkpoints (or logdir/best).

        A new file set per step, and the folder's `checkpoint` index updated
        only after it is complete (TF writes it atomically): a crash mid-save
        leaves the previous checkpoint in force. Weights that are not finite
        are never written: returns None then."""
        if not self.weights_finite():
            return None
        folder = os.path.join(logdir, "best" if best else "checkpoints")
        saver = self.best_saver if best else self.saver
        return saver.save(self.sess, os.path.join(folder, "model.ckpt"), global_step=step,
                          write_meta_graph=False)


def dequantization_noise(indices, draw, image_shape, n_bins):
    """Uniform noise in [0, 1/n_bins) [len(indices), *image_shape] for
    evaluating test images `indices`: image i's draw `draw` comes from its
    own random stream (i, draw), whatever batch or rank it is evaluated in."""
    return np.stack([np.random.RandomState([int(i), int(draw)]).uniform(0, 1.0 / n_bins, image_shape)
                     for i in indices]).astype(np.float32)


def resolve_checkpoint(path):
    """A checkpoint prefix from a prefix or a folder (its latest checkpoint)."""
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            for sub in ("checkpoints", "best"):
                if os.path.isdir(os.path.join(path, sub)):
                    prefix = tf.train.latest_checkpoint(os.path.join(path, sub))
                    if prefix:
                        break
        if prefix is None:
            raise ValueError("--restore_path %s: no checkpoint in this folder (nor in its checkpoints/ or best/)"
                             % path)
        return prefix
    if not tf.train.checkpoint_exists(path):
        raise ValueError("--restore_path %s: no such checkpoint (expected a folder or a prefix like "
                         "logs/checkpoints/model.ckpt-1000 with its .index file)" % path)
    return path


def _check_all_used(prefix, have, used):
    unused = sorted(set(have) - used)
    if unused:
        raise ValueError("checkpoint %s holds %d variables this model does not have, e.g. %s: it was written by a "
                         "model with other flags (--n_levels, --depth, --flow_permutation, --flow_coupling, "
                         "--learntop, --ycond); use those flags, or a new --logdir"
                         % (prefix, len(unused), ", ".join(unused[:3])))


def checkpoint_in_layout(prefix, shapes, scratch_dir):
    """A checkpoint holding the variables `shapes` ({key: shape}, a graph's
    saver keys) from checkpoint `prefix`: `prefix` itself when it has them
    all; else a copy written under scratch_dir in which step variables are
    converted between the unrolled layout (one variable per flow step, the
    default) and the looped one (--loop_steps: one per level stacked over
    the steps, model.step_key), both ways, slots and averages included. So
    a run written with --loop_steps resumes, evaluates or samples without
    it and the other way round. A variable found in neither layout is a
    ValueError naming it, and so is a variable of the checkpoint that this
    model has no use for (it was written by a model with other flags: a
    smaller model would otherwise load part of it and train on)."""
    reader = tf.train.load_checkpoint(prefix)
    have = reader.get_variable_to_shape_map()
    if all(list(have.get(key, [-1])) == list(shape) for key, shape in shapes.items()):
        _check_all_used(prefix, have, set(shapes))
        return prefix
    rows = {}  # stacked key -> {step: the checkpoint's key of that step's variable}
    for key in have:
        stacked = glow_model.step_key(key)
        if stacked is not None:
            rows.setdefault(stacked[0], {})[stacked[1]] = key
    values, missing, used = {}, [], set()
    for key, shape in sorted(shapes.items()):
        stacked = glow_model.step_key(key)
        if key in have:
            values[key] = reader.get_tensor(key)
            used.add(key)
        elif stacked is not None and stacked[0] in have:
            values[key] = reader.get_tensor(stacked[0])[stacked[1]]
            used.add(stacked[0])
        elif key in rows and sorted(rows[key]) == list(range(shape[0] if shape else 0)):
            values[key] = np.stack([reader.get_tensor(rows[key][i]) for i in range(shape[0])])
            used.update(rows[key].values())
        else:
            missing.append(key)
            continue
        if list(values[key].shape) != shape:
            missing.append("%s (shape %s in the checkpoint, %s here)" % (key, list(values[key].shape), shape))
    if missing:
        raise ValueError("checkpoint %s does not hold %d of this model's variables, e.g. %s: was it written by a "
                         "model with other flags (--n_levels, --depth, --width, --flow_permutation, "
                         "--flow_coupling, --learntop, --ycond)?" % (prefix, len(missing), ", ".join(missing[:3])))
    _check_all_used(prefix, have, used)
    keys = sorted(values)
    out = os.path.join(scratch_dir, "converted.ckpt")
    with tf.Graph().as_default():
        holders = [tf.placeholder(tf.as_dtype(values[k].dtype)) for k in keys]
        save = tf.raw_ops.SaveV2(prefix=out, tensor_names=keys, shape_and_slices=[""] * len(keys),
                                 tensors=holders)
        with tf.Session() as sess:
            sess.run(save, dict(zip(holders, [values[k] for k in keys])))
    return out

