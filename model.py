"""The Glow model (Kingma & Dhariwal 2018) as a TF1 graph, from tfops.py.

Architecture (paper section 3, Figure 2): squeeze the image; per level, `depth` flow steps (actnorm -> permutation ->
coupling), then, between levels, split off half the channels under a learned Gaussian prior and squeeze again. The
top latent's Gaussian prior is zero, learned (`learntop`) or class-conditional (`ycond`). `Glow` holds
hyperparameters and build choices (the level runner, an export's 1x1-conv constants), no variables: every graph it
builds reads the same variables under one scope, and a `custom_getter` lets an evaluation graph read other values for
them (the Polyak averages) without swapping weights. A level's steps keep their variables stacked (stacked.py).
"""
import collections
import copy
import functools

import numpy as np
import tensorflow.compat.v1 as tf

import kernels as kernels_lib
import stacked
import tfops
import utils

Encoding = collections.namedtuple("Encoding", ["z", "logdet", "objective", "eps"])
Encoding.__doc__ = """Result of `Glow.encode`. z: top latent [B, h, w, c]; logdet: the flow's log-determinant [B];
objective: logdet + the log-densities of every split-off half and of the top latent under their priors [B] (log p(x)
before the discretisation term); eps: per-level standardised noise, split levels first, top last (what `decode`
inverts exactly)."""

# Glow's arguments that define the model (and its checkpoint's variables): what a run folder records to rebuild it.
ARCHITECTURE = ("image_shape", "n_levels", "depth", "width", "permutation", "coupling", "n_bits_x", "learntop",
                "ycond", "n_y", "weight_y")


class FlowStep(tfops.CouplingStep):
    """One step of flow (paper Figure 2a, openai/glow's revnet2d_step) under variable scope `name`: actnorm ->
    permutation -> coupling, ops of tfops' contract op(z, logdet, reverse) -> (z, logdet); the inverse runs the list
    reversed. Its coupling's parts (tfops.CouplingStep: `prefix`, `nn`, `couple`) let the invertible gradient run
    the network once per step backward. n_channels: of z. conv1x1_constants: see Glow."""

    def __init__(self, name, n_channels, permutation, coupling, width, kernels="plain", conv1x1_constants=None):
        self.name, self.width, self.kernels = name, width, kernels
        self.n_out, self._couple = tfops.COUPLINGS[coupling][0] * n_channels // 2, tfops.COUPLINGS[coupling][1]
        permute = tfops.PERMUTATIONS[permutation]
        if conv1x1_constants is not None and permutation in ("invconv", "invconv_lu"):
            permute = functools.partial(tfops.conv1x1_constant, constants=conv1x1_constants)
        self.prefix_ops = [functools.partial(tfops.actnorm, "actnorm"), functools.partial(permute, permutation)]

    def __call__(self, z, logdet, reverse=False):
        return self._run(self.prefix_ops + [self.coupling], z, logdet, reverse)

    def prefix(self, z, logdet, reverse=False):
        return self._run(self.prefix_ops, z, logdet, reverse)

    def _run(self, ops, z, logdet, reverse):
        with tf.variable_scope(self.name):
            for op in (reversed(ops) if reverse else ops):
                z, logdet = op(z, logdet, reverse)
        return z, logdet

    def coupling(self, z, logdet, reverse):
        """[z1, z2] -> [z1, couple(nn(z1), z2)] (paper 3.3), in the step's scope."""
        z1, z2 = tfops.halves(z)
        z2, logdet = self.couple(self._nn(z1), z2, logdet, reverse)
        return tf.concat([z1, z2], 3), logdet

    def nn(self, z1):
        with tf.variable_scope(self.name):
            return self._nn(z1)

    def couple(self, h, z2, logdet, reverse=False):
        return self._couple(h, z2, logdet, reverse)

    def _nn(self, z1):
        return tfops.coupling_nn("f1", z1, width=self.width, n_out=self.n_out, kernels=self.kernels)


class Glow(object):
    """Glow's hyperparameters and the graphs built from them.

    image_shape: (H, W, C), H and W divisible by 2**n_levels. permutation in tfops.PERMUTATIONS, coupling in
    tfops.COUPLINGS, kernels in kernels.KINDS (how the coupling networks' convs are computed). conv1x1_constants:
    {scope name: (W, W^-1, log|det W|)} of a trained model's 1x1 convs, which then are constants (an export's graph).
    run_steps(make_step, depth, z, logdet, reverse) runs one level's steps (stacked.unrolled_steps by default); the
    graph whose gradients are taken is built by `with_steps(a memory-saving runner)`. The model reads no flags (see
    from_config)."""

    def __init__(self, image_shape, n_levels=3, depth=32, width=512, permutation="invconv",
                 coupling="additive", n_bits_x=8, learntop=False, ycond=False, n_y=1,
                 weight_y=0.0, dtype=tf.float32, kernels="plain", run_steps=stacked.unrolled_steps, name="model",
                 conv1x1_constants=None):
        h, w, c = [int(d) for d in image_shape]
        utils.check_choice("permutation", permutation, tfops.PERMUTATIONS)
        utils.check_choice("coupling", coupling, tfops.COUPLINGS)
        if n_levels < 1 or depth < 1 or width < 1:
            raise ValueError("n_levels %d, depth %d, width %d: each must be >= 1" % (n_levels, depth, width))
        if h % 2 ** n_levels or w % 2 ** n_levels:
            raise ValueError("image %dx%d with n_levels %d: height and width must be divisible by 2**n_levels = %d"
                             % (h, w, n_levels, 2 ** n_levels))
        if not 1 <= n_bits_x <= 8:
            raise ValueError("n_bits_x %d: must be in 1..8" % n_bits_x)
        if ycond and n_y < 2:
            raise ValueError("ycond needs a labelled problem (n_y >= 2), got n_y %d" % n_y)
        self.image_shape, self.n_levels, self.depth, self.width = (h, w, c), n_levels, depth, width
        self.permutation, self.coupling, self.n_bits_x, self.n_bins = permutation, coupling, n_bits_x, 2.0 ** n_bits_x
        self.learntop, self.ycond, self.n_y, self.weight_y = learntop, ycond, n_y, weight_y
        self.dtype, self.kernels = tf.as_dtype(dtype), kernels_lib.check(kernels)
        self.run_steps, self.name, self.n_dims = run_steps, name, h * w * c
        self.conv1x1_constants = conv1x1_constants
        # The top latent: squeezed once, then once after each split.
        self.top_shape = (h // 2 ** n_levels, w // 2 ** n_levels, c * 2 ** (n_levels + 1))

    @property
    def eps_shapes(self):
        """Encoding.eps's shapes [h, w, c] without the batch, first level first: level l < n_levels - 1 splits off
        half of its (H/2^(l+1), W/2^(l+1), 4C*2^l) activations, the top is top_shape."""
        h, w, c = self.image_shape
        return [[h // 2 ** (level + 1), w // 2 ** (level + 1), c * 2 ** (level + 1)]
                for level in range(self.n_levels - 1)] + [list(self.top_shape)]

    def flatten(self, eps):
        """Encoding.eps as one flat latent [B, D], first level first."""
        return tf.concat([tf.reshape(e, [tf.shape(e)[0], int(np.prod(s))]) for e, s in zip(eps, self.eps_shapes)], 1)

    def unflatten(self, z):
        """A flat latent [B, D] (`flatten`'s) as the list of eps that `decode` takes."""
        sizes = [int(np.prod(s)) for s in self.eps_shapes]
        return [tf.reshape(part, [-1] + s) for part, s in zip(tf.split(z, sizes, 1), self.eps_shapes)]

    @classmethod
    def from_config(cls, cfg, **kwargs):
        """The model of a run config (config.py's): its ARCHITECTURE fields, kernels and `kwargs` (e.g. run_steps)."""
        return cls(kernels=cfg.kernels, **dict(((k, getattr(cfg, k)) for k in ARCHITECTURE), **kwargs))

    def with_steps(self, run_steps):
        """The same model (the same variables) with its levels' steps run by `run_steps`: e.g. the training loss's
        graph, whose gradients take less memory (memory_saving_gradients.checkpointed_steps, looped.looped_steps)."""
        other = copy.copy(self)
        other.run_steps = run_steps
        return other

    def scope(self, custom_getter=None):
        """The model's variable scope: created on first use, reused after."""
        return tf.variable_scope(self.name, reuse=tf.AUTO_REUSE, use_resource=True, custom_getter=custom_getter)

    def preprocess(self, x_uint8):
        """uint8 [B, H, W, C] -> float in [-0.5, 0.5), reduced to n_bits_x bits."""
        x = tf.cast(x_uint8, self.dtype)
        if self.n_bits_x < 8:
            x = tf.floor(x / 2 ** (8 - self.n_bits_x))
        return x / self.n_bins - 0.5

    def postprocess(self, x):
        """float in [-0.5, 0.5] -> uint8: preprocess inverted, up to the dequantisation noise."""
        x = tf.floor((x + 0.5) * self.n_bins) * (256.0 / self.n_bins)
        return tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)

    def dequantize(self, x):
        """Uniform noise of one bin's width (paper section 2: a continuous density on discrete data)."""
        return x + tf.random_uniform(tf.shape(x), 0, 1.0 / self.n_bins, dtype=self.dtype)

    def _level(self, level, z, logdet, reverse):
        """Level `level`'s `depth` flow steps (or their inverses)."""
        n_channels = tfops.int_shape(z)[3]

        def make_step(name):
            return FlowStep(name, n_channels, self.permutation, self.coupling, self.width, self.kernels,
                            self.conv1x1_constants)

        with tf.variable_scope(str(level)):
            return self.run_steps(make_step, self.depth, z, logdet, reverse=reverse)

    def encode(self, x, y=None, custom_getter=None):
        """x: preprocessed (and dequantised) data [B, H, W, C], y: labels [B] (read with ycond) -> Encoding."""
        with self.scope(custom_getter):
            logdet = objective = tf.zeros([tf.shape(x)[0]], self.dtype)
            z = tfops.squeeze2d(x)  # [B, H/2, W/2, 4C]
            eps = []
            for level in range(self.n_levels):
                z, logdet = self._level(level, z, logdet, reverse=False)
                if level < self.n_levels - 1:
                    z, objective, e = tfops.split2d("pool%d" % level, z, objective,
                                                    kernels=self.kernels)  # [B, h/2, w/2, 2c]
                    eps.append(e)
        prior = self.top_prior(y, tf.shape(x)[0], custom_getter)
        eps.append(prior.get_eps(z))
        objective += logdet + prior.logp(z)
        return Encoding(z=z, logdet=logdet, objective=objective, eps=eps)

    def top_prior(self, y, batch_size, custom_getter=None):
        """The top latent's Gaussian prior: zero, plus a learned conv of zeros (learntop), a class embedding (ycond)."""
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

    def decode(self, eps, y=None, temperature=1.0, custom_getter=None):
        """Latent noise -> data in [-0.5, 0.5] (before postprocess). eps: a list like Encoding.eps, given in full the
        exact inverse of `encode` (up to float error); entries None are drawn from the prior at `temperature`."""
        eps = [None] * self.n_levels if eps is None else eps
        if len(eps) != self.n_levels:
            raise ValueError("decode: got %d eps tensors for %d levels" % (len(eps), self.n_levels))
        known = [e for e in eps if e is not None]
        prior = self.top_prior(y, tf.shape(known[0])[0] if known else tf.shape(y)[0], custom_getter)
        z = prior.sample(eps[-1] if eps[-1] is not None else prior.random_eps(temperature))
        with self.scope(custom_getter):
            for level in reversed(range(self.n_levels)):
                if level < self.n_levels - 1:
                    z = tfops.split2d_reverse("pool%d" % level, z, eps[level], temperature, kernels=self.kernels)
                z, _ = self._level(level, z, tf.zeros([tf.shape(z)[0]], self.dtype), reverse=True)
            return tfops.unsqueeze2d(z)  # [B, H, W, C]

    def losses(self, x_uint8, y, dequantize=True, custom_getter=None):
        """The objective on a batch of uint8 images, as per-example tensors [B]: objective (log p(x) of the continuous
        model, nats), bits_x (bits per dimension, the paper's metric: -objective / (ln 2 * H*W*C)), bits_y (class loss
        in bits; zero without ycond and weight_y), loss (bits_x + weight_y * bits_y), pred_loss (1 for a wrong class
        prediction, and without a classifier, as openai/glow)."""
        x = self.preprocess(x_uint8)
        if dequantize:
            x = self.dequantize(x)
        return self.stats(x, y, custom_getter)[0]

    def stats(self, x, y, custom_getter=None):
        """(`losses` of preprocessed, dequantised data x [B, H, W, C], the Encoding they come from)."""
        enc = self.encode(x, y, custom_getter)
        # Discretisation: a density on bins of width 1/n_bins in each of D dims.
        objective = enc.objective - np.log(self.n_bins) * self.n_dims
        bits_x = -objective / (np.log(2.0) * self.n_dims)
        bits_y, pred_loss = tf.zeros_like(bits_x), tf.ones_like(bits_x)
        if self.ycond and self.weight_y > 0:
            with self.scope(custom_getter):
                logits = tfops.linear_zeros("classifier", tf.reduce_mean(enc.z, axis=[1, 2]), self.n_y)
            y_onehot = tf.one_hot(y, self.n_y, dtype=self.dtype)
            bits_y = tf.nn.softmax_cross_entropy_with_logits_v2(labels=y_onehot, logits=logits) / np.log(2.0)
            predicted = tf.argmax(logits, 1, output_type=tf.int32)
            pred_loss = 1.0 - tf.cast(tf.equal(predicted, tf.cast(y, tf.int32)), self.dtype)
        return {"objective": objective, "bits_x": bits_x, "bits_y": bits_y, "loss": bits_x + self.weight_y * bits_y,
                "pred_loss": pred_loss}, enc

    def init_op(self, x_uint8, y):
        """Data-dependent initialisation (paper 3.1): one pass over a batch that sets every actnorm's bias and
        scale from its activations. Run it once, after the variable initialisers."""
        with tfops.data_dependent_init():
            return tf.reduce_mean(self.losses(x_uint8, y)["loss"])

    def sample(self, y, temperature=1.0, custom_getter=None):
        """Draw images (uint8 [B, H, W, C]) at a temperature (scalar or [B])."""
        return self.postprocess(self.decode(None, y, temperature, custom_getter))
