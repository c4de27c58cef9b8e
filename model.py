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
import re

import numpy as np
import tensorflow.compat.v1 as tf

import memory_saving_gradients
import tfops

Encoding = collections.namedtuple("Encoding", ["z", "logdet", "objective", "eps", "zs"])
Encoding.__doc__ = """Result of `Glow.encode`.

z: top latent [B, h, w, c]; logdet: sum of the flow's log-determinants [B];
objective: logdet + log-densities of every split-off half and of the top
latent under their priors [B] (log p(x) of the continuous model before the
discretisation term); eps: per-level standardised noise, split levels first,
top last (what `decode` takes to invert exactly); zs: the split-off halves and
the top z (before standardisation), in the same order."""


def _stacked_request(name, steps):
    """tf.get_variable kwargs for one variable stacked over the steps, from
    each step's request for it (`steps`, in step order)."""
    first = dict((k, v) for k, v in steps[0].items() if k not in ("reuse", "custom_getter", "name"))
    inits = [s.get("initializer") for s in steps]
    if all(isinstance(i, (np.ndarray, np.generic, list, int, float)) for i in inits):
        first["initializer"] = np.stack([np.asarray(i) for i in inits])
        first["shape"] = None
        return first
    same = all(type(i) is type(inits[0]) and hasattr(i, "get_config") and i.get_config() == inits[0].get_config()
               for i in inits)
    if not same or first.get("shape") is None:
        raise ValueError("looped steps: variable %r has initialisers %r, which cannot be stacked (expected NumPy "
                         "values, or one TF initializer object of the same config for every step)"
                         % (name, sorted(set(type(i).__name__ for i in inits))))
    first["shape"] = [len(steps)] + list(tf.TensorShape(first["shape"]).as_list())
    return first


def step_key(name):
    """A looped build's stacked step variable name (or checkpoint key, a
    slot's included) for an unrolled build's: ("model/0/step/actnorm/b", 3)
    for "model/0/3/actnorm/b"; None for names that are not a step's."""
    match = _UNROLLED_STEP.match(name)
    if match is None:
        return None
    return "%s/%s/%s" % (match.group(1), memory_saving_gradients.STEP_SCOPE, match.group(3)), int(match.group(2))


_UNROLLED_STEP = re.compile(r"^(.*?/\d+)/(\d+)/(.+)$")


class Glow(object):
    """Glow's hyperparameters and the graphs built from them.

    image_shape: (H, W, C) of the data; H and W must be divisible by
    2**n_levels. permutation in tfops.PERMUTATIONS, coupling in
    tfops.COUPLINGS. loop_steps: run each level's steps as a tf.while_loop
    over one copy of the step in every graph, the data-dependent init's too
    (memory_saving_gradients.looped_flow), with each variable of the steps
    stacked over them ([depth, ...], step_key): same results, a graph whose
    size does not grow with depth (Trainer converts checkpoints between the
    two layouts on restore). The model never reads flags: train.py passes
    numbers (from_config)."""

    def __init__(self, image_shape, n_levels=3, depth=32, width=512, permutation="invconv",
                 coupling="additive", n_bits_x=8, learntop=False, ycond=False, n_y=1,
                 weight_y=0.0, dtype=tf.float32, loop_steps=False, name="model"):
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
        self.loop_steps = bool(loop_steps)
        self.name = name
        self.n_dims = h * w * c
        # Shape of the top latent: squeeze once, then squeeze after each split.
        self.top_shape = (h // 2 ** n_levels, w // 2 ** n_levels, c * 2 ** (n_levels + 1))

    @classmethod
    def from_config(cls, cfg, **overrides):
        """The model of a run config (config.py's frozen one): its
        architecture fields, with `overrides` (e.g. loop_steps=False for an
        unrolled copy)."""
        kwargs = dict(n_levels=cfg.n_levels, depth=cfg.depth, width=cfg.width, permutation=cfg.permutation,
                      coupling=cfg.coupling, n_bits_x=cfg.n_bits_x, learntop=cfg.learntop, ycond=cfg.ycond,
                      n_y=cfg.n_y, weight_y=cfg.weight_y, loop_steps=cfg.loop_steps)
        kwargs.update(overrides)
        return cls(cfg.image_shape, **kwargs)

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

    def _flow_step(self, name, n_channels):
        """One step of flow (paper Figure 2a) on z with `n_channels`: actnorm
        -> permutation -> coupling, under variable scope `name`, as the parts
        that memory_saving_gradients.CouplingStep needs."""
        n_per_channel, couple = tfops.COUPLINGS[self.coupling]

        def prefix(z, logdet, reverse):
            ops = [
                lambda z_, ld: tfops.actnorm("actnorm", z_, ld, reverse=reverse),
                lambda z_, ld: tfops.PERMUTATIONS[self.permutation](self.permutation, z_, ld, reverse=reverse),
            ]
            with tf.variable_scope(name):
                for op in (reversed(ops) if reverse else ops):
                    z, logdet = op(z, logdet)
            return z, logdet

        def nn(z1):
            with tf.variable_scope(name):
                return tfops.coupling_nn("f1", z1, self.width, n_per_channel * n_channels // 2)

        return memory_saving_gradients.CouplingStep(prefix, nn, couple)

    def _level(self, level, z, logdet, reverse, checkpointing="none"):
        """`depth` flow steps; forward, their gradient is that of the
        `checkpointing` mode (memory_saving_gradients.MODES)."""
        n_channels = tfops.int_shape(z)[3]
        with tf.variable_scope(str(level)):
            if self.loop_steps:
                params, constants = self._stacked_step_variables(z, n_channels)
                step = self._flow_step(memory_saving_gradients.STEP_SCOPE, n_channels)
                return memory_saving_gradients.looped_flow(step, params, constants, z, logdet, self.depth,
                                                           mode=checkpointing, reverse=reverse,
                                                           ddi_init=tfops.in_ddi_init())
            steps = [self._flow_step(str(i), n_channels) for i in range(self.depth)]
            if not reverse:
                return memory_saving_gradients.flow(steps, z, logdet, mode=checkpointing)
            for step in reversed(steps):
                z, logdet = step(z, logdet, True)
        return z, logdet

    def _stacked_step_variables(self, z, n_channels):
        """For looped_flow, under a level's variable scope: its steps'
        variables, each stacked over the steps as one variable
        `STEP_SCOPE/<name>` of shape [depth, ...] (row i is step i's), as the
        scope's custom getter gives them (an evaluation graph's: the Polyak
        averages): ({name: variable or tensor} for the trainable float
        variables, {the same} for the others). The first graph to ask
        creates them (_create_step_variables)."""
        prefix = tf.get_variable_scope().name + "/" + memory_saving_gradients.STEP_SCOPE + "/"

        def stacked():
            return [v for v in tf.global_variables() if v.op.name.startswith(prefix)]

        if not stacked():
            self._create_step_variables(z, n_channels)
        params, constants = {}, {}
        for v in stacked():
            name = v.op.name[len(prefix):]
            with tf.variable_scope(memory_saving_gradients.STEP_SCOPE, reuse=True):
                value = tf.get_variable(name, shape=v.get_shape(), dtype=v.dtype.base_dtype, trainable=v.trainable)
            (params if v.trainable and v.dtype.base_dtype.is_floating else constants)[name] = value
        return params, constants

    def _create_step_variables(self, z, n_channels):
        """Create a level's stacked step variables (_stacked_step_variables)
        without building `depth` steps' ops in this graph: each step is
        built in a scratch graph of its own under an unrolled build's scope
        names and graph seed, which records what it asks tf.get_variable
        for; each stacked variable's initial value stacks those of the
        steps. Initial values drawn in NumPy from the scope's name
        (tfops.layer_rng: the 1x1 convs, permutations) are an unrolled
        build's, row by row; TF's random initialisers draw the whole stack
        at once, so differ from an unrolled build's."""
        scope = tf.get_variable_scope().name
        requests = collections.OrderedDict()  # name in the step -> [the tf.get_variable kwargs of each step]

        def record(getter, name, *args, **kwargs):
            step_name = name[len(scope) + 1:].split("/", 1)[1]
            requests.setdefault(step_name, []).append(kwargs)
            return getter(name, *args, **kwargs)

        seed = tf.get_default_graph().seed
        for i in range(self.depth):
            with tf.Graph().as_default():  # one step per scratch graph: only one is alive at a time
                tf.set_random_seed(seed)
                z_in = tf.placeholder(z.dtype, z.get_shape())
                logdet = tf.zeros([tf.shape(z_in)[0]], z.dtype)
                with tf.variable_scope(scope, custom_getter=record):
                    self._flow_step(str(i), n_channels)(z_in, logdet, False)
        with tf.variable_scope(memory_saving_gradients.STEP_SCOPE):
            for name, steps in requests.items():
                tf.get_variable(name, **_stacked_request(name, steps))

    def encode(self, x, y=None, custom_getter=None, checkpointing="none"):
        """x: preprocessed (and dequantised) data [B,H,W,C], y: labels [B]
        (used with ycond) -> Encoding. checkpointing: how the flow's gradient
        saves memory, one of memory_saving_gradients.MODES (training only)."""
        with self.scope(custom_getter):
            logdet = tf.zeros([tf.shape(x)[0]], self.dtype)
            objective = tf.zeros([tf.shape(x)[0]], self.dtype)
            z = tfops.squeeze2d(x)  # [B, H/2, W/2, 4C]
            eps, zs = [], []
            for level in range(self.n_levels):
                z, logdet = self._level(level, z, logdet, reverse=False, checkpointing=checkpointing)
                if level < self.n_levels - 1:
                    zs.append(z[:, :, :, int(z.get_shape()[3]) // 2:])
                    z, objective, e = tfops.split2d("pool%d" % level, z, objective)  # [B, h/2, w/2, 2c]
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
                h = tfops.conv2d_zeros("p", h, 2 * n_z)
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
                    z = tfops.split2d_reverse("pool%d" % level, z, eps[level], temperature)
                z, _ = self._level(level, z, tf.zeros([tf.shape(z)[0]], self.dtype), reverse=True)
            return tfops.unsqueeze2d(z)  # [B, H, W, C]

    # -- objectives ------------------------------------------------------------

    def losses(self, x_uint8, y, dequantize=True, custom_getter=None, checkpointing="none"):
        """The training/evaluation objective on a batch of uint8 images.

        Returns a dict of per-example tensors [B]: objective (log p(x) of the
        continuous model, in nats), bits_x (bits per dimension, the paper's
        metric: -objective / (ln 2 * H*W*C)), bits_y (class loss in bits,
        zero without ycond and weight_y), loss (bits_x + weight_y * bits_y),
        pred_loss (1 for a wrong class prediction; 1 without a classifier,
        as openai/glow). checkpointing: see `encode`; take the gradients
        with memory_saving_gradients.gradients(..., mode=checkpointing)."""
        x = self.preprocess(x_uint8)
        if dequantize:
            x = self.dequantize(x)
        return self.stats(x, y, custom_getter, checkpointing)[0]

    def stats(self, x, y, custom_getter=None, checkpointing="none"):
        """`losses` of preprocessed (and dequantised) data x [B,H,W,C], and the
        Encoding they come from: (dict of per-example tensors, Encoding)."""
        enc = self.encode(x, y, custom_getter, checkpointing)
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
