"""The graphs of a run and the session that runs them (train.py: the loop)."""
import numpy as np
import tensorflow.compat.v1 as tf

import checkpoints
import looped
import memory_saving_gradients
import model as glow_model
import optim
import utils

# Per-example statistics of training and evaluation: their order in every array, their names in logs (openai/glow's).
STATS = ("loss", "bits_x", "bits_y", "pred_loss")
WEIGHTS = ("raw", "polyak")


def _use_polyak(weights):
    if weights not in WEIGHTS:
        raise ValueError("weights %r: expected one of %s" % (weights, ", ".join(WEIGHTS)))
    return weights == "polyak"


class Trainer(object):
    """Every graph a run needs, built once on one set of weights (cfg: a config.Config): data-dependent init; the
    training step (gradients averaged over ranks, Adam/Adamax, Polyak average, skipped when not finite);
    evaluation, sampling and encoding with the raw weights (the paper's test figure) or their Polyak averages
    (`weights`). On the NPU every graph has a static batch (the Ascend compiler's need; see _run)."""

    def __init__(self, cfg, backend, session_factory):
        self.cfg, self.backend = cfg, backend
        self.static_shapes = cfg.device == "npu"
        run_steps = (looped.runner if cfg.loop_steps else memory_saving_gradients.unrolled)(cfg.gradient_checkpointing)
        self.glow = glow_model.Glow.from_config(cfg, run_steps=run_steps)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(backend.rank_seed(cfg.seed))
            self._build()
            self.graph.finalize()
        self.sess = session_factory(self.graph)

    def _inputs(self, name, batch):
        """uint8 images [B, H, W, C] and int32 labels [B]."""
        n = batch if self.static_shapes else None
        return (tf.placeholder(tf.uint8, [n] + list(self.cfg.image_shape), name="x_" + name),
                tf.placeholder(tf.int32, [n], name="y_" + name))

    def _build(self):
        cfg, backend = self.cfg, self.backend
        self.x_init, self.y_init = self._inputs("init", cfg.local_batch_init)
        self.x, self.y = self._inputs("train", cfg.local_batch_train)
        self.x_test, self.y_test = self._inputs("test", cfg.local_batch_test)
        self.y_sample = self._inputs("sample", cfg.local_batch_train)[1]
        self.init_loss = self.glow.init_op(self.x_init, self.y_init)
        self._build_train_step()
        self._build_evaluation()
        self.gather_in = tf.placeholder(tf.float32, [None], name="gather_in")
        self.gather_out = backend.allreduce_mean(self.gather_in) * float(backend.size())
        self.checkpoints = checkpoints.Checkpoints(utils.dumps_strict(cfg.as_dict(), "config"))
        float_vars = [v for v in tf.global_variables() if v.dtype.base_dtype.is_floating]
        self.all_finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.is_finite(v)) for v in float_vars]))
        # Not the run/ strings: each rank's config names its own --logdir, and only rank 0 saves them.
        self.broadcast = backend.broadcast_variables([v for v in tf.global_variables()
                                                      if v.dtype.base_dtype != tf.string])
        self.global_init = tf.global_variables_initializer()

    def _build_train_step(self):
        """Gradients of the mean loss (with the configured memory saving), averaged over ranks, one optimizer
        update. The loss scale (NPU mixed precision) multiplies the loss before backprop and divides the
        gradients after, so that small gradients survive float16."""
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
        self.train_stats = self.backend.allreduce_mean(tf.stack([tf.reduce_mean(stats[k]) for k in STATS]))

    def _build_evaluation(self):
        """Evaluation, sampling and encoding, one graph each for both weightings (fed). One encoding of the test
        batch serves evaluation and `encode`, with the noise fed: each image's own draws for evaluation
        (dequantization_noise: the same for both weightings and any rerun), the bin centres for `encode`
        (decoding must give the same integers)."""
        glow = self.glow
        self.use_polyak = tf.placeholder_with_default(False, [], name="use_polyak")
        ema = self.opt.ema.getter(self.use_polyak)
        self.noise_test = tf.placeholder(glow.dtype, self.x_test.get_shape(), name="noise_test")
        eval_stats, enc = glow.stats(glow.preprocess(self.x_test) + self.noise_test, self.y_test, custom_getter=ema)
        self.eval_per_example = [eval_stats[k] for k in STATS]
        self.temperature = tf.placeholder(tf.float32, [None], name="temperature")
        self.samples = glow.sample(self.y_sample, self.temperature, custom_getter=ema)
        self.z_flat = tf.concat([tf.reshape(e, [tf.shape(self.x_test)[0], -1]) for e in enc.eps], axis=1)  # [B, D]
        shapes = [e.get_shape().as_list()[1:] for e in enc.eps]
        self.z_sizes = [int(np.prod(shape)) for shape in shapes]  # each level's share of z, first level first
        self.z_in = tf.placeholder(glow.dtype, [self.x_test.get_shape()[0], sum(self.z_sizes)], name="z_in")
        eps = [tf.reshape(part, [-1] + shape) for part, shape in zip(tf.split(self.z_in, self.z_sizes, 1), shapes)]
        self.x_decoded = glow.postprocess(glow.decode(eps, self.y_test, custom_getter=ema))

    def initialize(self, x_init, y_init):
        """Fresh weights: initialisers, data-dependent init on a batch per rank,
        rank 0's weights (and init statistics) to all, the Polyak average seeded."""
        self.sess.run(self.global_init)
        self.sess.run(self.init_loss, {self.x_init: x_init, self.y_init: y_init})
        self.sess.run(self.broadcast)
        self.sess.run(self.opt.ema.seed_op)

    def restore(self, path):
        """Restore a checkpoint (a prefix or a folder holding one) on all ranks
        as on rank 0. Returns (its prefix, its RunState)."""
        prefix = checkpoints.resolve(path)
        self.sess.run(self.global_init)
        state = self.checkpoints.restore(self.sess, prefix)
        self.sess.run(self.broadcast)
        return prefix, state

    def save(self, logdir, state, best=False):
        """A checkpoint with `state` (a RunState); its prefix, or None: weights
        that are not finite are never written."""
        if not self.sess.run(self.all_finite):
            return None
        return self.checkpoints.save(self.sess, logdir, state, best)

    def train_step(self, x, y, lr, loss_scale=1.0):
        """One step at learning rate `lr`. Returns (applied, the batch's mean STATS)."""
        _, applied, stats = self.sess.run([self.opt.train_op, self.opt.grads_finite, self.train_stats],
                                          {self.x: x, self.y: y, self.lr: lr, self.loss_scale: loss_scale})
        return bool(applied), stats

    def n_skipped(self):
        return int(self.sess.run(self.opt.n_skipped))

    def eval_per_image(self, batches, first_index=0, n_draws=1, weights="raw"):
        """Per-image STATS [4, n] of `batches` (their first image is test image `first_index`) with the
        `weights`, each the mean over n_draws dequantisation draws (the same for both weightings)."""
        use_polyak = _use_polyak(weights)
        out, index = [np.zeros((len(STATS), 0))], first_index
        for x, y in batches:
            feeds = [{self.x_test: x, self.y_test: y, self.noise_test: dequantization_noise(
                range(index, index + len(x)), draw, x.shape[1:], self.glow.n_bins)} for draw in range(n_draws)]
            draws = [self._run(self.eval_per_example, f, use_polyak, self.cfg.local_batch_test) for f in feeds]
            out.append(np.mean(np.array(draws, np.float64)[:, :, :len(x)], axis=0))  # [4, B]
            index += len(x)
        return np.concatenate(out, axis=1)

    def gather(self, local, start, n_total):
        """Every rank's `local` [k, n_r] at its columns start_r.. of one [k,
        n_total] array on every rank (a summing allreduce of zero-padded rows)."""
        full = np.zeros((local.shape[0], n_total), np.float32)
        full[:, start:start + local.shape[1]] = local
        if self.backend.size() == 1:
            return full
        return self.sess.run(self.gather_out, {self.gather_in: full.ravel()}).reshape(full.shape)

    def sample(self, y, temperatures, weights="raw"):
        """Images for labels y [B] at per-image temperatures [B]; any B."""
        n, use_polyak = self.cfg.local_batch_train, _use_polyak(weights)
        feeds = ({self.y_sample: y[i:i + n], self.temperature: temperatures[i:i + n]} for i in range(0, len(y), n))
        return np.concatenate([self._run(self.samples, feed, use_polyak, n) for feed in feeds])[:len(y)]

    def encode(self, x, y, weights="raw"):
        """z [B, D]: the eps of every level (z_sizes), flattened, of images x at their bin centres; any B."""
        centre = np.full(x.shape[1:], 0.5 / self.glow.n_bins, self.glow.dtype.as_numpy_dtype)
        return self._batched(self.z_flat, {self.x_test: x, self.y_test: y}, weights, {self.noise_test: centre})

    def decode(self, z, y, weights="raw"):
        """uint8 images from z [B, D] (`encode`'s inverse: decode(encode(x)) is x); any B."""
        return self._batched(self.x_decoded, {self.z_in: z, self.y_test: y}, weights)

    def _batched(self, fetch, feed, weights, each=None):
        """`fetch` for the arrays of `feed` in test batches (`each`: {tensor: one image's value}, fed to all)."""
        n, use_polyak, out = self.cfg.local_batch_test, _use_polyak(weights), []
        for i in range(0, len(feed[self.y_test]), n):
            part = dict((key, value[i:i + n]) for key, value in feed.items())
            b = len(part[self.y_test])
            part.update((key, np.broadcast_to(value, (b,) + value.shape)) for key, value in (each or {}).items())
            out.append(self._run(fetch, part, use_polyak, n)[:b])
        return np.concatenate(out)

    def _run(self, fetches, feed, use_polyak, batch):
        """sess.run with the raw or the Polyak weights. With static shapes a short batch is padded to `batch`
        (its last entry repeated): callers keep the first len() results."""
        if self.static_shapes:
            feed = dict((key, _padded(value, batch)) for key, value in feed.items())
        feed[self.use_polyak] = use_polyak
        return self.sess.run(fetches, feed)


def _padded(value, batch):
    value = np.asarray(value)
    if len(value) > batch:
        raise ValueError("batch of %d for a graph of static batch %d" % (len(value), batch))
    return np.concatenate([value, np.repeat(value[-1:], batch - len(value), axis=0)])


def dequantization_noise(indices, draw, image_shape, n_bins):
    """Uniform noise in [0, 1/n_bins) [len(indices), *image_shape] for evaluating test images `indices`:
    image i's draw `draw` comes from its own random stream (i, draw), whatever batch or rank it is evaluated in."""
    return np.stack([np.random.RandomState([int(i), int(draw)]).uniform(0, 1.0 / n_bins, image_shape)
                     for i in indices]).astype(np.float32)


class LossScale(object):
    """--loss_scale: fixed, or dynamic (2**15 at first, halved at a non-finite
    step, doubled after `period` finite ones); the RunState holds its value."""

    def __init__(self, setting, period=2000):
        self.dynamic, self.period, self._good = setting == "dynamic", period, 0
        self.fixed = None if self.dynamic else float(setting)

    def start(self, state, restored):
        """state.loss_scale at a run's start: a dynamic one continues a restored state."""
        if not (self.dynamic and restored):
            state.loss_scale = 2.0 ** 15 if self.dynamic else self.fixed

    def update(self, state, applied):
        """After a step: True when the scale explains a skipped step (it was lowered), which then is no failure."""
        self._good = self._good + 1 if applied else 0
        if self.dynamic and applied and self._good % self.period == 0:
            state.loss_scale *= 2.0
        lowered = self.dynamic and not applied and state.loss_scale > 1.0
        if lowered:
            state.loss_scale /= 2.0
        return lowered
