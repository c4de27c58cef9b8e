"""The Glow model (Kingma & Dhariwal 2018) as a TF1 graph, from tfops.py.

Architecture (paper section 3 and Figure 2): squeeze the image, then for each
of `n_levels` levels run `depth` flow steps (actnorm -> permutation ->
coupling) and, between levels, split off half the channels with a learned
Gaussian prior and squeeze again. The top latent has a Gaussian prior that is
zero, learned (`learntop`) or class-conditional (`ycond`).

`Glow` holds only hyperparameters; every graph it builds (init, train, test,
sampling, encoding) reads the same variables under one variable scope, so one
set of weights serves them all. Optional `custom_getter` arguments let an
evaluation graph read other values for the same variables (the Polyak
averages), without swapping weights in and out.
"""
import collections

import numpy as np
import tensorflow.compat.v1 as tf

import kernels as kernels_lib
import tfops

Encoding = collections.namedtuple("Encoding", ["z", "logdet", "objective", "eps", "zs"])
Encoding.__doc__ = """Result of `Glow.encode`.

z: top latent [B, h, w, c]; logdet: sum of the flow's log-determinants [B];
objective: logdet + log-densities of every split-off half and of the top
latent under their priors [B] (log p(x) of the continuous model before the
discretisation term); eps: per-level standardised noise, split levels first,
top last (what `decode` takes to invert exactly); zs: the split-off halves and
the top z (before standardisation), in the same order."""


ARCHITECTURE = ("image_shape", "n_levels", "depth", "width", "permutation", "coupling", "n_bits_x", "learntop",
                "ycond", "n_y", "weight_y")
"""Glow's constructor arguments that define the model (and its checkpoint's
variables): what a run folder records so that it can be rebuilt."""


class FlowStep(object):
    """One step of flow (paper Figure 2a, openai/glow's revnet2d_step) under
    variable scope `name`: actnorm -> invertible 1x1 conv (or permutation)
    -> coupling; the inverse runs the same list reversed. Each op follows
    tfops' contract op(z, logdet, reverse) -> (z, logdet).

    The coupling is also given as its parts, the tags memory_saving_gradients'
    invertible mode reads: `nn` (z1 -> h, the network) and `couple` (h, z2 ->
    z2', the transform), so that the backward pass evaluates the network
    once per step; `prefix` is the ops before the coupling."""

    def __init__(self, glow, name, n_channels):
        self.glow = glow
        self.name = name
        n_per_channel, self.couple_fn = tfops.COUPLINGS[glow.coupling]
        self.n_nn_out = n_per_channel * n_channels // 2

    def __call__(self, z, logdet, reverse=False):
        return self._run([self.actnorm, self.permute, self.coupling], z, logdet, reverse)

    def prefix(self, z, logdet, reverse=False):
        return self._run([self.actnorm, self.permute], z, logdet, reverse)

    def _run(self, ops, z, logdet, reverse):
        with tf.variable_scope(self.name):
            for op in (reversed(ops) if reverse else ops):
                z, logdet = op(z, logdet, reverse)
        return z, logdet

    def actnorm(self, z, logdet, reverse):
        return tfops.actnorm("actnorm", z, logdet, reverse=reverse)

    def permute(self, z, logdet, reverse):
        permutation = self.glow.permutation
        return tfops.PERMUTATIONS[permutation](permutation, z, logdet, reverse=reverse)

    def coupling(self, z, logdet, reverse):
        """[z1, z2] -> [z1, couple(nn(z1), z2)] (paper 3.3): z1 passes through
        and conditions the transform of z2."""
        z1, z2 = tfops.halves(z)
        z2, logdet = self.couple(self._nn(z1), z2, logdet, reverse)
        return tf.concat([z1, z2], 3), logdet

    def nn(self, z1):
        with tf.variable_scope(self.name):
            return self._nn(z1)

    def _nn(self, z1):
        return tfops.coupling_nn("f1", z1, self.glow.width, self.n_nn_out, kernels=self.glow.kernels)

    def couple(self, h, z2, logdet, reverse=False):
        return self.couple_fn(h, z2, logdet, reverse)


def unrolled(make_step, depth, z, logdet, reverse=False, for_gradients=False):
    """A level's `depth` steps, each with its own ops and variables (scopes
    "0", "1", ...), or their inverses last to first: Glow's default
    `run_steps`. A trainer passes memory_saving_gradients' or looped.py's
    to take gradients with less memory."""
    steps = [make_step(str(i)) for i in range(depth)]
    for step in (reversed(steps) if reverse else steps):
        z, logdet = step(z, logdet, reverse)
    return z, logdet


class Glow(object):
    """Glow's hyperparameters and the graphs built from them.

    image_shape: (H, W, C) of the data; H and W must be divisible by
    2**n_levels. permutation in tfops.PERMUTATIONS, coupling in
    tfops.COUPLINGS, kernels in kernels.KINDS (how the coupling networks'
    convolutions are computed: same function). run_steps(make_step, depth,
    z, logdet, reverse, for_gradients) runs one level's steps (`unrolled`
    by default); `losses(..., for_gradients=True)` builds the graph whose
    gradients are taken, where a trainer's run_steps may save memory. The
    model never reads flags: train.py passes numbers (from_config)."""

    def __init__(self, image_shape, n_levels=3, depth=32, width=512, permutation="invconv",
                 coupling="additive", n_bits_x=8, learntop=False, ycond=False, n_y=1,
                 weight_y=0.0, dtype=tf.float32, kernels="plain", run_steps=unrolled, name="model"):
        h, w, c = [int(d) for d in image_shape]
        if permutation not in tfops.PERMUTATIONS:
            raise ValueError("permutation %r: expected one of %s" % (permutation, sorted(tfops.PERMUTATIONS)))
        if coupling not in tfops.COUPLINGS:
            raise ValueError("coupling %r: expected one of %s" % (coupling, sorted(tfops.COUPLINGS)))
        if n_levels < 1 or depth < 1 or width < 1:
            raise ValueError("n_levels %d, depth %d, width %d: each must be >= 1" % (n_levels, depth, width))
        if h % 2 ** n_levels or w % 2 ** n_levels:
            raise ValueError("image %dx%d with n_levels %d: height and width must be divisible by 2**n_levels = %d"
                             % (h, w, n_levels, 2 ** n_levels))
        if not 1 <= n_bits_x <= 8:
            raise ValueError("n_bits_x %d: must be in 1..8" % n_bits_x)
        if ycond and n_y < 2:
            raise ValueError("ycond needs a labelled problem (n_y >= 2), got n_y %d" % n_y)
        self.image_shape = (h, w, c)
        self.n_levels = n_levels
        self.depth = depth
        self.width = width
        self.permutation = permutation
        self.coupling = coupling
        self.n_bits_x = n_bits_x
        self.n_bins = 2.0 ** n_bits_x
        self.learntop = learntop
        self.ycond = ycond
        self.n_y = n_y
        self.weight_y = weight_y
        self.dtype = tf.as_dtype(dtype)
        self.kernels = kernels_lib.check(kernels)
        self.run_steps = run_steps
        self.name = name
        self.n_dims = h * w * c
        # Shape of the top latent: squeeze once, then squeeze after each split.
        self.top_shape = (h // 2 ** n_levels, w // 2 ** n_levels, c * 2 ** (n_levels + 1))

    @classmethod
    def from_config(cls, cfg, **kwargs):
        """The model of a run config (config.py's): its ARCHITECTURE fields and
        kernels, with `kwargs` (e.g. run_steps) added."""
        return cls(kernels=cfg.kernels, **dict(((k, getattr(cfg, k)) for k in ARCHITECTURE), **kwargs))

    # -- scopes and pre/post-processing ------------------------------------

    def scope(self, custom_getter=None):
        """The model's variable scope: created on first use, reused after."""
        return tf.variable_scope(self.name, reuse=tf.AUTO_REUSE, use_resource=True, custom_getter=custom_getter)

    def preprocess(self, x_uint8):
        """uint8 [B,H,W,C] -> float in [-0.5, 0.5), reduced to n_bits_x bits."""
        x = tf.cast(x_uint8, self.dtype)
        if self.n_bits_x < 8:
            x = tf.floor(x / 2 ** (8 - self.n_bits_x))
        return x / self.n_bins - 0.5

    def postprocess(self, x):
        """float in [-0.5, 0.5] -> uint8, the inverse of preprocess up to the
        dequantisation noise."""
        x = tf.floor((x + 0.5) * self.n_bins) * (256.0 / self.n_bins)
        return tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)

    def dequantize(self, x):
        """Add uniform noise of one bin width (paper section 2: continuous
        density on discrete data)."""
        return x + tf.random_uniform(tf.shape(x), 0, 1.0 / self.n_bins, dtype=self.dtype)

    # -- the flow ------------------------------------------------------------

    def _level(self, level, z, logdet, reverse, for_gradients=False):
        """Level `level`'s `depth` flow steps (or their inverses)."""
        n_channels = tfops.int_shape(z)[3]
        with tf.variable_scope(str(level)):
            return self.run_steps(lambda name: FlowStep(self, name, n_channels), self.depth, z, logdet,
                                  reverse=reverse, for_gradients=for_gradients)

    def encode(self, x, y=None, custom_getter=None, for_gradients=False):
        """x: preprocessed (and dequantised) data [B,H,W,C], y: labels [B]
        (used with ycond) -> Encoding."""
        with self.scope(custom_getter):
            logdet = tf.zeros([tf.shape(x)[0]], self.dtype)
            objective = tf.zeros([tf.shape(x)[0]], self.dtype)
            z = tfops.squeeze2d(x)  # [B, H/2, W/2, 4C]
            eps, zs = [], []
            for level in range(self.n_levels):
                z, logdet = self._level(level, z, logdet, reverse=False, for_gradients=for_gradients)
                if level < self.n_levels - 1:
                    zs.append(z[:, :, :, int(z.get_shape()[3]) // 2:])
                    z, objective, e = tfops.split2d("pool%d" % level, z, objective, kernels=self.kernels)  # [B, h/2, w/2, 2c]
                    eps.append(e)
            zs.append(z)
        prior = self.top_prior(y, tf.shape(x)[0], custom_getter)
        eps.append(prior.get_eps(z))
        objective += logdet + prior.logp(z)
        return Encoding(z=z, logdet=logdet, objective=objective, eps=eps, zs=zs)

    def top_prior(self, y, batch_size, custom_getter=None):
        """Gaussian prior of the top latent: zero mean/log-std, plus a learned
        conv of zeros (learntop) and a class embedding (ycond)."""
        n_z = self.top_shape[2]
        with self.scope(custom_getter), tf.variable_scope("prior"):
            h = tf.zeros(tf.stack([batch_size] + list(self.top_shape[:2]) + [2 * n_z]), self.dtype)
            h.set_shape([None] + list(self.top_shape[:2]) + [2 * n_z])
            if self.learntop:
                h = tfops.conv2d_zeros("p", h, 2 * n_z, kernels=self.kernels)
            if self.ycond:
                y_onehot = tf.one_hot(y, self.n_y, dtype=self.dtype)
                h += tf.reshape(tfops.linear_zeros("y_emb", y_onehot, 2 * n_z), [-1, 1, 1, 2 * n_z])
        return tfops.GaussianDiag(h[:, :, :, :n_z], h[:, :, :, n_z:])

    def decode(self, eps, y=None, temperature=1.0, batch_size=None, custom_getter=None):
        """Latent noise -> data in [-0.5, 0.5] (before postprocess).

        eps: list like Encoding.eps (split levels first, top last); an entry
        None is drawn from the prior scaled by `temperature`. With eps given
        in full this inverts `encode` exactly (up to float error)."""
        if eps is None:
            eps = [None] * self.n_levels
        if len(eps) != self.n_levels:
            raise ValueError("decode: got %d eps tensors for %d levels" % (len(eps), self.n_levels))
        if batch_size is None:
            known = [e for e in eps if e is not None]
            batch_size = tf.shape(known[0])[0] if known else tf.shape(y)[0]
        prior = self.top_prior(y, batch_size, custom_getter)
        top_eps = eps[-1] if eps[-1] is not None else prior.random_eps(temperature)
        z = prior.sample(top_eps)
        with self.scope(custom_getter):
            for level in reversed(range(self.n_levels)):
                if level < self.n_levels - 1:
                    z = tfops.split2d_reverse("pool%d" % level, z, eps[level], temperature, kernels=self.kernels)
                z, _ = self._level(level, z, tf.zeros([tf.shape(z)[0]], self.dtype), reverse=True)
            return tfops.unsqueeze2d(z)  # [B, H, W, C]

    # -- objectives ------------------------------------------------------------

    def losses(self, x_uint8, y, dequantize=True, custom_getter=None, for_gradients=False):
        """The training/evaluation objective on a batch of uint8 images.

        Returns a dict of per-example tensors [B]: objective (log p(x) of the
        continuous model, in nats), bits_x (bits per dimension, the paper's
        metric: -objective / (ln 2 * H*W*C)), bits_y (class loss in bits,
        zero without ycond and weight_y), loss (bits_x + weight_y * bits_y),
        pred_loss (1 for a wrong class prediction; 1 without a classifier,
        as openai/glow). for_gradients: the graph whose gradients are taken
        (see `Glow`)."""
        x = self.preprocess(x_uint8)
        if dequantize:
            x = self.dequantize(x)
        return self.stats(x, y, custom_getter, for_gradients)[0]

    def stats(self, x, y, custom_getter=None, for_gradients=False):
        """`losses` of preprocessed (and dequantised) data x [B,H,W,C], and the
        Encoding they come from: (dict of per-example tensors, Encoding)."""
        enc = self.encode(x, y, custom_getter, for_gradients)
        # Discretisation: a density on bins of width 1/n_bins in each of D dims.
        objective = enc.objective - np.log(self.n_bins) * self.n_dims
        bits_x = -objective / (np.log(2.0) * self.n_dims)
        if self.ycond and self.weight_y > 0:
            with self.scope(custom_getter):
                h_y = tf.reduce_mean(enc.z, axis=[1, 2])
                logits = tfops.linear_zeros("classifier", h_y, self.n_y)
            y_onehot = tf.one_hot(y, self.n_y, dtype=self.dtype)
            bits_y = tf.nn.softmax_cross_entropy_with_logits_v2(labels=y_onehot, logits=logits) / np.log(2.0)
            predicted = tf.argmax(logits, 1, output_type=tf.int32)
            pred_loss = 1.0 - tf.cast(tf.equal(predicted, tf.cast(y, tf.int32)), self.dtype)
        else:
            bits_y = tf.zeros_like(bits_x)
            pred_loss = tf.ones_like(bits_x)
        return {
            "objective": objective,
            "bits_x": bits_x,
            "bits_y": bits_y,
            "loss": bits_x + self.weight_y * bits_y,
            "pred_loss": pred_loss,
        }, enc

    def init_op(self, x_uint8, y):
        """Data-dependent initialisation (paper 3.1): one pass over a batch that
        sets every actnorm's bias and scale from its activations. Run it once,
        after the variable initialisers."""
        with tfops.arg_scope([tfops.get_variable_ddi], init=True):
            stats = self.losses(x_uint8, y)
        return tf.reduce_mean(stats["loss"])

    def sample(self, y, temperature=1.0, batch_size=None, custom_getter=None):
        """Draw images (uint8 [B,H,W,C]) at a temperature (scalar or [B])."""
        if batch_size is None:
            batch_size = tf.shape(y)[0]
        x = self.decode(None, y, temperature, batch_size, custom_getter)
        return self.postprocess(x)
