"""A trained model's graphs and the session that runs them: per-image statistics, samples, encoding and decoding
with the raw weights (the paper's test figure) or their Polyak averages. It builds the model and the averages
only, no gradients and no optimizer: evaluation, sampling, the tools and export read a checkpoint's weights and
averages and leave its optimizer state out (trainer.Trainer adds the training step to the same graphs)."""
import os
from concurrent import futures

import numpy as np
import tensorflow.compat.v1 as tf

import checkpoints
import looped
import model as glow_model
import optim
import stacked
import utils

# Per-example statistics of training and evaluation: their order in every array, their names in logs (openai/glow's).
STATS = ("loss", "bits_x", "bits_y", "pred_loss")
WEIGHTS = ("raw", "polyak")
# Evaluation noise kept between test lines (Evaluator._noise): Fashion-MNIST's and CIFAR-10's test sets fit.
NOISE_KEPT_BYTES = 256 * 2 ** 20


def _use_polyak(weights):
    return utils.check_choice("weights", weights, WEIGHTS) == "polyak"


class Evaluator(object):
    """The model-only graphs of a run (cfg: a config.Config): evaluation and encoding (built first: they create
    every variable), sampling and decoding (built on first use: a graph builds only what it runs), with either
    weighting (fed), and the per-image gather across ranks. On the NPU every graph has a static batch (the Ascend
    compiler's need; see _run)."""

    def __init__(self, cfg, backend, session_factory):
        self.cfg, self.backend = cfg, backend
        self.static_shapes = cfg.device == "npu"
        # Runs eval_weightings lets go at once: one per weighting, but one at a time on the NPU.
        self.parallel_runs = 1 if self.static_shapes else len(WEIGHTS)
        self._kept_noise = {}  # {(first image, n, draw, image shape): the evaluation's noise}: see _noise
        # How the model runs a level's steps: a looped run's loop, else unrolled.
        self.glow = glow_model.Glow.from_config(cfg, run_steps=looped.looped_steps("none") if cfg.loop_steps
                                                else stacked.unrolled_steps)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(backend.rank_seed(cfg.seed))
            # The Polyak average lives beside the model: its variables are created on the first graph's reads.
            self.ema = optim.Polyak([], cfg.polyak_decay)
            self._build()
        self.sess = session_factory(self.graph)

    def _inputs(self, name, batch):
        """uint8 images [B, H, W, C] and int32 labels [B]."""
        n = batch if self.static_shapes else None
        return (tf.placeholder(tf.uint8, [n] + list(self.cfg.image_shape), name="x_" + name),
                tf.placeholder(tf.int32, [n], name="y_" + name))

    def _build(self):
        self._build_inputs()
        self._build_evaluation()
        self.weights = checkpoints.ModelWeights(tf.global_variables(), left_out=optim.is_state)

    def _build_inputs(self):
        self.x_test, self.y_test = self._inputs("test", self.cfg.local_batch_test)
        self.y_sample = self._inputs("sample", self.cfg.local_batch_train)[1]

    def _build_evaluation(self):
        """Evaluation, sampling and encoding, one graph each for both weightings (fed). One encoding of the test
        batch serves evaluation and `encode`, with the noise fed: each image's own draws for evaluation
        (dequantization_noise: the same for both weightings and any rerun), the bin centres for `encode`
        (decoding must give the same integers)."""
        glow, backend = self.glow, self.backend
        self.use_polyak = tf.placeholder_with_default(False, [], name="use_polyak")
        ema = self.ema.getter(self.use_polyak)
        self.noise_test = tf.placeholder(glow.dtype, self.x_test.get_shape(), name="noise_test")
        eval_stats, enc = glow.stats(glow.preprocess(self.x_test) + self.noise_test, self.y_test, custom_getter=ema)
        self.eval_per_example = [eval_stats[k] for k in STATS]
        self._ema_getter, self.samples, self.x_decoded = ema, None, None
        self.z_flat = glow.flatten(enc.eps)  # [B, D]
        self.z_sizes = [int(np.prod(shape)) for shape in glow.eps_shapes]  # each level's share of z, first level first
        self.gather_in = tf.placeholder(tf.float32, [None], name="gather_in")
        self.gather_out = backend.allreduce_mean(self.gather_in) * float(backend.size())

    def _build_sampling(self):
        self.temperature = tf.placeholder(tf.float32, [None], name="temperature")
        self.samples = self.glow.sample(self.y_sample, self.temperature, custom_getter=self._ema_getter)

    def _build_decoding(self):
        glow = self.glow
        self.z_in = tf.placeholder(glow.dtype, [self.x_test.get_shape()[0], sum(self.z_sizes)], name="z_in")
        self.x_decoded = glow.postprocess(glow.decode(glow.unflatten(self.z_in), self.y_test,
                                                      custom_getter=self._ema_getter))

    def _built(self, name, build):
        """Graph `name` (an attribute), built now if it was not."""
        if getattr(self, name) is None:
            with self.graph.as_default():
                build()
        return getattr(self, name)

    def restore(self, path):
        """The model's weights and their averages from a checkpoint (a prefix or a folder holding one); its
        optimizer state is left out. Every rank reads the same file. Returns (its prefix, its RunState). A prefix is
        one its caller resolved (checkpoints.resolve/latest read it whole already): it is not read a third time."""
        prefix = checkpoints.resolve(path) if os.path.isdir(path) else path
        return prefix, self.weights.restore(self.sess, prefix)

    def eval_per_image(self, batches, first_index=0, n_draws=1, weights="raw"):
        """Per-image statistics {name in STATS: [n]} of `batches` (their first image is test image `first_index`)
        with the `weights`, each the mean over n_draws dequantisation draws (the same for both weightings)."""
        return self.eval_weightings(batches, first_index, n_draws, (weights,))[weights]

    def eval_weightings(self, batches, first_index=0, n_draws=1, weightings=WEIGHTS):
        """eval_per_image for each of `weightings` in one pass over `batches`: {weights: {name: [n]}}. Each
        batch is fed, and its noise drawn, once for all of them. The weightings' runs of a batch go at the same
        time (parallel_runs threads), and the next batch's noise is drawn meanwhile: on a CPU two forward passes
        share the cores better than one after the other (docs/BENCHMARKS.md, "Evaluation")."""
        use_polyak = [(w, _use_polyak(w)) for w in weightings]
        out, index, pending = dict((w, [np.zeros((len(STATS), 0))]) for w in weightings), first_index, None
        with futures.ThreadPoolExecutor(max(1, min(self.parallel_runs, len(weightings)))) as pool:
            for x, y in batches:
                feeds = [{self.x_test: x, self.y_test: y,
                          self.noise_test: self._noise(index, len(x), draw, x.shape[1:])} for draw in range(n_draws)]
                self._collect(pending, out)
                pending = len(x), [(w, [pool.submit(self._run, self.eval_per_example, dict(f), polyak,
                                                    self.cfg.local_batch_test) for f in feeds])
                                   for w, polyak in use_polyak]
                index += len(x)
            self._collect(pending, out)
        return dict((w, dict(zip(STATS, np.concatenate(parts, axis=1)))) for w, parts in out.items())

    def _noise(self, first, n, draw, image_shape):
        """dequantization_noise of images first.., kept for the next test line while the kept noise stays within
        NOISE_KEPT_BYTES (drawing it takes about 1 s per 10,000 Fashion-MNIST images on this CPU)."""
        key = (first, n, draw, tuple(image_shape))
        noise = self._kept_noise.get(key)
        if noise is None:
            noise = dequantization_noise(range(first, first + n), draw, image_shape, self.glow.n_bins)
            if noise.nbytes + sum(v.nbytes for v in self._kept_noise.values()) <= NOISE_KEPT_BYTES:
                self._kept_noise[key] = noise
        return noise

    @staticmethod
    def _collect(pending, out):
        """A batch's submitted runs (its size, [(weights, [a future per draw])]) into `out`: the mean over the
        draws, each [4, B] (a padded batch's extra rows dropped)."""
        if pending is not None:
            n, runs = pending
            for w, draws in runs:
                out[w].append(np.mean(np.array([d.result() for d in draws], np.float64)[:, :, :n], axis=0))

    def gather(self, local, start, n_total):
        """Every rank's per-image statistics `local` {name: [n_r]} at its images start_r.. of one {name: [n_total]}
        on every rank (a summing allreduce of zero-padded rows)."""
        names = sorted(local)
        full = np.zeros((len(names), n_total), np.float32)
        for row, name in zip(full, names):
            row[start:start + len(local[name])] = local[name]
        if self.backend.size() > 1:
            full = self.sess.run(self.gather_out, {self.gather_in: full.ravel()}).reshape(full.shape)
        return dict(zip(names, full))

    def sample(self, y, temperatures, weights="raw"):
        """Images for labels y [B] at per-image temperatures [B]; any B."""
        n, use_polyak = self.cfg.local_batch_train, _use_polyak(weights)
        samples = self._built("samples", self._build_sampling)
        feeds = ({self.y_sample: y[i:i + n], self.temperature: temperatures[i:i + n]} for i in range(0, len(y), n))
        return np.concatenate([self._run(samples, feed, use_polyak, n) for feed in feeds])[:len(y)]

    def encode(self, x, y, weights="raw"):
        """z [B, D]: the eps of every level (z_sizes), flattened, of images x at their bin centres; any B."""
        centre = np.full(x.shape[1:], 0.5 / self.glow.n_bins, self.glow.dtype.as_numpy_dtype)
        return self._batched(self.z_flat, {self.x_test: x, self.y_test: y}, weights, {self.noise_test: centre})

    def decode(self, z, y, weights="raw"):
        """uint8 images from z [B, D] (`encode`'s inverse: decode(encode(x)) is x); any B."""
        x_decoded = self._built("x_decoded", self._build_decoding)
        return self._batched(x_decoded, {self.z_in: z, self.y_test: y}, weights)

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
