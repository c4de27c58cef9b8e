"""The training graph of train.py and what runs it: init, one step,
evaluation, sampling, encoding, checkpoints.

One `Trainer` builds, once, every graph a run needs on one set of weights:
the data-dependent init, the training step (gradients averaged over ranks,
Adam/Adamax, Polyak average, skipped when non-finite), and evaluation,
sampling and encoding graphs that read either the raw weights (the paper's
and openai/glow's test bits/dim) or their Polyak averages, as fed
(`weights`: "raw" or "polyak"). The loop itself lives in train.py.
"""
import numpy as np
import tensorflow.compat.v1 as tf

import checkpoints
import looped
import memory_saving_gradients
import model as glow_model
import optim
import utils

# The per-example statistics of training and evaluation, in this order
# wherever they travel as an array, and their names in the logs (openai/glow's).
STATS = ("loss", "bits_x", "bits_y", "pred_loss")
WEIGHTS = ("raw", "polyak")


def _check_weights(weights):
    if weights not in WEIGHTS:
        raise ValueError("weights %r: expected one of %s" % (weights, ", ".join(WEIGHTS)))
    return weights == "polyak"


class Trainer(object):
    """Graph and session of one run. cfg: config.py's Config."""

    def __init__(self, cfg, backend, session_factory):
        self.cfg = cfg
        self.backend = backend
        mode = cfg.gradient_checkpointing
        run_steps = looped.runner(mode) if cfg.loop_steps else memory_saving_gradients.unrolled(mode)
        self.glow = glow_model.Glow.from_config(cfg, run_steps=run_steps)
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
        cfg = self.cfg
        self.static_shapes = cfg.device == "npu"
        self.x_init, self.y_init = self._inputs("init", cfg.local_batch_init)
        self.x, self.y = self._inputs("train", cfg.local_batch_train)
        self.x_test, self.y_test = self._inputs("test", cfg.local_batch_test)
        self.y_sample = self._inputs("sample", cfg.local_batch_train)[1]
        self.init_loss = self.glow.init_op(self.x_init, self.y_init)
        self._build_train_step()
        self._build_evaluation()
        self.gather_in = tf.placeholder(tf.float32, [None], name="gather_in")
        self.gather_out = self.backend.allreduce_mean(self.gather_in) * float(self.backend.size())
        self.checkpoints = checkpoints.Checkpoints(utils.dumps_strict(cfg.as_dict(), "config"))
        float_vars = [v for v in tf.global_variables() if v.dtype.base_dtype.is_floating]
        self.all_finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.is_finite(v)) for v in float_vars]))
        # The run/ strings are the same on every rank (set before each save).
        self.broadcast = self.backend.broadcast_variables([v for v in tf.global_variables()
                                                           if v.dtype.base_dtype != tf.string])
        self.global_init = tf.global_variables_initializer()

    def _build_train_step(self):
        """One step: gradients of the mean loss (with the configured memory
        saving), averaged over ranks, one optimizer update. Loss scaling for
        reduced precision (NPU mixed precision): the loss is multiplied
        before backprop and the gradients divided after, so that small
        gradients survive float16; 1 (the default) changes nothing."""
        cfg = self.cfg
        self.lr = tf.placeholder(tf.float32, [], name="lr")
        self.loss_scale = tf.placeholder_with_default(tf.constant(1.0), [], name="loss_scale")
        stats = self.glow.losses(self.x, self.y, for_gradients=True)
        loss = tf.reduce_mean(stats["loss"])
        params = tf.trainable_variables()
        grads = memory_saving_gradients.gradients(loss * self.loss_scale, params, mode=cfg.gradient_checkpointing)
        grads = self.backend.allreduce_mean([None if g is None else g / self.loss_scale for g in grads])
        self.opt = optim.make_train_op(cfg.optimizer, params, grads, self.lr, cfg.beta1, cfg.beta2,
                                       weight_decay=cfg.weight_decay, loss=loss)
        self.train_stats = self._mean_stats(stats)

    def _build_evaluation(self):
        """Evaluation, sampling and encoding, reading the raw weights or their
        Polyak averages as fed: one copy of each graph serves both.

        One encoding of the test batch serves evaluation and `encode`; the
        dequantisation noise is fed: draws fixed by each image's index
        (dequantization_noise) for evaluation, so both weightings and any
        re-evaluation see the same noise; the centre of each bin for
        `encode` (decoding it must give back the same integers)."""
        glow = self.glow
        self.use_polyak = tf.placeholder_with_default(False, [], name="use_polyak")
        ema = self.opt.ema.getter(self.use_polyak)
        self.noise_test = tf.placeholder(glow.dtype, self.x_test.get_shape(), name="noise_test")
        eval_stats, enc = glow.stats(glow.preprocess(self.x_test) + self.noise_test, self.y_test, custom_getter=ema)
        self.eval_per_example = [eval_stats[k] for k in STATS]
        self.temperature = tf.placeholder(tf.float32, [None], name="temperature")
        self.samples = glow.sample(self.y_sample, self.temperature, custom_getter=ema)
        n = tf.shape(self.x_test)[0]
        self.z_flat = tf.concat([tf.reshape(e, [n, -1]) for e in enc.eps], axis=1)
        self.x_decoded = glow.postprocess(glow.decode(enc.eps, self.y_test, custom_getter=ema))

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
        """Restore a checkpoint (a prefix, or a folder holding one), make all
        ranks equal to rank 0. Returns (its prefix, its RunState)."""
        prefix = checkpoints.resolve(path)
        self.sess.run(self.global_init)
        state = self.checkpoints.restore(self.sess, prefix)
        self.sess.run(self.broadcast)
        return prefix, state

    # -- steps -------------------------------------------------------------------

    def train_step(self, x, y, lr, loss_scale=1.0):
        """One step at learning rate `lr`. Returns (applied, the batch's mean STATS)."""
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

    def save(self, logdir, state, best=False):
        """Write a checkpoint with `state` (checkpoints.Checkpoints.save).
        Weights that are not finite are never written: returns None then."""
        if not self.weights_finite():
            return None
        return self.checkpoints.save(self.sess, logdir, state, best)


def dequantization_noise(indices, draw, image_shape, n_bins):
    """Uniform noise in [0, 1/n_bins) [len(indices), *image_shape] for
    evaluating test images `indices`: image i's draw `draw` comes from its
    own random stream (i, draw), whatever batch or rank it is evaluated in."""
    return np.stack([np.random.RandomState([int(i), int(draw)]).uniform(0, 1.0 / n_bins, image_shape)
                     for i in indices]).astype(np.float32)


class LossScale(object):
    """--loss_scale: fixed, or dynamic (start at 2**15, halve on a non-finite
    step, double after `period` finite ones), as mixed-precision training
    does. The current value is the RunState's `loss_scale`."""

    def __init__(self, setting, period=2000):
        self.dynamic = setting == "dynamic"
        self.fixed = None if self.dynamic else float(setting)
        self.period = period
        self._good = 0

    def start(self, state, restored):
        """Set state.loss_scale for a run's start: a dynamic scale continues
        from a restored state; a fixed one is the flag's."""
        if not (self.dynamic and restored):
            state.loss_scale = 2.0 ** 15 if self.dynamic else self.fixed

    def update(self, state, applied):
        """After a step. Returns True when a skipped step is explained by the
        scale (it was lowered), so it should not count as a failure."""
        if not self.dynamic:
            return False
        if applied:
            self._good += 1
            if self._good % self.period == 0:
                state.loss_scale *= 2.0
            return False
        self._good = 0
        if state.loss_scale > 1.0:
            state.loss_scale /= 2.0
            return True
        return False
