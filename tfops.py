"""Glow's building blocks in portable TF1 graph code (Kingma & Dhariwal 2018).

Every invertible op has one contract:

    op(name, z, logdet, reverse=False) -> (z, logdet)

with `z` of shape [B, H, W, C] (NHWC) and `logdet` the per-example
log|det dz_out/dz_in| of shape [B]. The log-determinant of each op is
computed once and added in the forward direction, subtracted in reverse, so
`reverse(forward(z))` gives back both `z` and the incoming `logdet`.

All ops create their variables with the dtype of `z`, so the same code runs in
float32 for training and in float64 for the Jacobian tests. Variable scope
names are checkpoint keys: they are chosen once here and must not change.

Runs unchanged on TensorFlow 1.15 and on TensorFlow 2.x through
`tensorflow.compat.v1`; `tf.contrib` does not exist on 2.x, hence the small
`arg_scope` below.
"""
import contextlib
import functools
import threading
import zlib

import numpy as np
import scipy.linalg
import tensorflow.compat.v1 as tf

import kernels as kernels_lib

# ---------------------------------------------------------------------------
# arg_scope: default keyword arguments for decorated functions, by context.
# ---------------------------------------------------------------------------

_scopes = threading.local()


def _current_arg_scope():
    if not hasattr(_scopes, "stack"):
        _scopes.stack = [{}]
    return _scopes.stack[-1]


def add_arg_scope(func):
    """Let `arg_scope([func], key=value)` supply default keyword arguments.

    Keyword arguments given at the call site win over the scope's."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        merged = dict(_current_arg_scope().get(wrapper, {}))
        merged.update(kwargs)
        return func(*args, **merged)

    wrapper.arg_scope_enabled = True
    return wrapper


@contextlib.contextmanager
def arg_scope(funcs, **kwargs):
    """Within the block, every function in `funcs` gets `kwargs` as defaults."""
    frame = dict(_current_arg_scope())
    for f in funcs:
        if not getattr(f, "arg_scope_enabled", False):
            raise ValueError("arg_scope: %r is not decorated with @add_arg_scope" % (f,))
        entry = dict(frame.get(f, {}))
        entry.update(kwargs)
        frame[f] = entry
    _current_arg_scope()  # make sure the stack exists
    _scopes.stack.append(frame)
    try:
        yield
    finally:
        _scopes.stack.pop()


# ---------------------------------------------------------------------------
# Shapes and variables
# ---------------------------------------------------------------------------


def int_shape(x):
    """Static shape as a list of ints, -1 for unknown dimensions."""
    return [-1 if d is None else int(d) for d in x.get_shape().as_list()]


def layer_rng(seed_extra=0):
    """A numpy RNG for initial values, fixed by the graph seed and the scope.

    Initial values computed in numpy (orthogonal and LU-factored 1x1 conv
    weights, shuffle indices) must not depend on numpy's global state, yet a
    run must be reproducible from `tf.set_random_seed`. The variable scope
    names the layer, so every layer gets its own stream."""
    scope = tf.get_variable_scope().name
    graph_seed = tf.get_default_graph().seed or 0
    return np.random.RandomState((zlib.crc32(scope.encode("utf-8")) + 7919 * graph_seed + seed_extra) % (2 ** 32))


class Zeros(object):
    """Initializer of zeros computed when the initialiser runs.

    tf.zeros_initializer's zeros are a constant that Grappler folds into a
    Const tensor of the variable's size, which the session then keeps for
    its lifetime: for the optimizer slots of the paper's model, more than
    the weights' size again. A fill from a PlaceholderWithDefault is not
    folded (above about 10 MiB; smaller ones are, and shared)."""

    def __init__(self, dtype=tf.float32):
        self.dtype = tf.as_dtype(dtype)

    def __call__(self, shape, dtype=None, partition_info=None):
        dtype = tf.as_dtype(dtype or self.dtype)
        zero = tf.placeholder_with_default(tf.zeros([], dtype), [])
        return tf.fill(shape, zero)

    def get_config(self):
        return {"dtype": self.dtype.name}


class DataDependent(Zeros):
    """The initializer of variables that data-dependent init sets (actnorm's):
    zeros until then. It also marks them for custom getters: looped.py's
    returns an object whose `assign` collects a loop iteration's values."""


@add_arg_scope
def get_variable_ddi(name, shape, initial_value, dtype, init=False, trainable=True):
    """A variable with data-dependent initialisation.

    Outside init mode this is `tf.get_variable`; with `init=True` (set by
    `arg_scope([get_variable_ddi], init=True)` over one batch) the returned
    tensor first assigns `initial_value`, computed from that batch."""
    w = tf.get_variable(name, shape, dtype, initializer=DataDependent(), trainable=trainable)
    if not init:
        return w
    assigned = w.assign(tf.reshape(tf.cast(initial_value, dtype), shape))
    with tf.control_dependencies([assigned]):
        return tf.identity(assigned)


# ---------------------------------------------------------------------------
# Actnorm (paper section 3.1)
# ---------------------------------------------------------------------------

LOGSCALE_FACTOR = 3.0


def actnorm_params(name, x, scale=1.0, logscale_factor=LOGSCALE_FACTOR):
    """Per-channel bias and log-scale of actnorm, data-dependently initialised.

    Init (paper 3.1): bias = -mean(x), scale = 1/(std + 1e-6) over the batch
    and spatial positions. The log-scale is stored divided by
    `logscale_factor` (openai/glow), which multiplies its effective learning
    rate by that factor. Returns (bias [C], logs [C])."""
    n_c = int_shape(x)[-1]
    axes = list(range(len(x.get_shape()) - 1))
    with tf.variable_scope(name):
        mean = tf.reduce_mean(x, axes)
        bias = get_variable_ddi("b", [n_c], -mean, x.dtype)
        var = tf.reduce_mean(tf.square(x + bias), axes)
        init_logs = tf.log(scale / (tf.sqrt(var) + 1e-6)) / logscale_factor
        logs = get_variable_ddi("logs", [n_c], init_logs, x.dtype) * logscale_factor
    return bias, logs


def actnorm(name, z, logdet, reverse=False):
    """Activation normalisation (paper 3.1): z -> (z + b) * exp(logs).

    logdet += H*W*sum(logs)."""
    bias, logs = actnorm_params(name, z)
    h, w = int_shape(z)[1:3]
    dlogdet = tf.reduce_sum(logs) * (h * w)
    if not reverse:
        return (z + bias) * tf.exp(logs), logdet + dlogdet
    return z * tf.exp(-logs) - bias, logdet - dlogdet


def actnorm_layer(name, x):
    """Actnorm used as a normalising layer (no log-det): conv layers of the
    coupling network use it in place of a bias."""
    bias, logs = actnorm_params(name, x)
    return (x + bias) * tf.exp(logs)


def actnorm_variables(name, n_c, dtype, logscale_factor=LOGSCALE_FACTOR):
    """The (bias [C], logs [C]) of `actnorm_params` once initialised: the same
    variables, without the batch statistics that only init needs."""
    with tf.variable_scope(name):
        bias = get_variable_ddi("b", [n_c], None, dtype, init=False)
        logs = get_variable_ddi("logs", [n_c], None, dtype, init=False) * logscale_factor
    return bias, logs


def in_ddi_init():
    """True inside `arg_scope([get_variable_ddi], init=True)`: the graph being
    built is the data-dependent init pass."""
    return bool(_current_arg_scope().get(get_variable_ddi, {}).get("init", False))


# ---------------------------------------------------------------------------
# Permutations (paper 3.2 and its ablation, section 5.1)
# ---------------------------------------------------------------------------


def reverse_features(name, z, logdet, reverse=False):
    """Reverse the channel order (RealNVP's fixed permutation). logdet += 0."""
    del name, reverse  # its own inverse, no parameters
    return z[:, :, :, ::-1], logdet


def shuffle_features(name, z, logdet, reverse=False):
    """A fixed random channel permutation. logdet += 0.

    The indices are a non-trainable variable so that a checkpoint restores the
    permutation it was trained with."""
    n_c = int_shape(z)[-1]
    with tf.variable_scope(name):
        perm = layer_rng().permutation(n_c).astype("int32")
        indices = tf.get_variable("indices", dtype=tf.int32, initializer=perm, trainable=False)
        if reverse:
            indices = tf.invert_permutation(indices)
        return tf.gather(z, indices, axis=3), logdet


def _orthogonal_init(n):
    """A random rotation (the paper's 1x1 conv init, section 3.2)."""
    return np.linalg.qr(layer_rng().randn(n, n))[0]


@tf.RegisterGradient("GlowLogAbsDet")
def _log_abs_det_grad(op, _dsign, dvalue):
    """Gradient of log_abs_det's slogdet: w^-T, from an inverse taken only
    where the value is finite; NaN otherwise."""
    w, value = op.inputs[0], op.outputs[1]
    ok = tf.is_finite(value)
    eye = tf.eye(int(w.get_shape()[0]), dtype=w.dtype)
    inv = tf.matrix_inverse(tf.cond(ok, lambda: w, lambda: eye))
    nan_if_singular = tf.cond(ok, lambda: tf.constant(1.0, w.dtype), lambda: tf.constant(np.nan, w.dtype))
    return dvalue * tf.transpose(inv) * nan_if_singular


def log_abs_det(w):
    """log|det w| of a square float64 matrix, with a gradient that never raises.

    TF's own gradients of matrix_determinant and slogdet invert w with an op
    that raises "Input is not invertible" on a singular or NaN matrix, which
    killed openai/glow's training runs. Here the value comes from slogdet (an
    LU with partial pivoting: exact for nearly singular w, -inf for a singular
    one) and the gradient w^-T from an inverse taken only when the value is
    finite. Otherwise the gradient is NaN, so the optimizer skips the step
    instead of the run dying.

    The gradient is registered once (a gradient override of this slogdet op)
    rather than by tf.custom_gradient, which registers a new closure per call
    in a process-wide registry and so keeps every graph that calls it alive."""
    with tf.get_default_graph().gradient_override_map({"LogMatrixDeterminant": "GlowLogAbsDet"}):
        return tf.linalg.slogdet(w)[1]


def _conv1x1(z, w):
    """z [B,H,W,C] times w [C,C] on every pixel: out[c'] = sum_c z[c] w[c,c'].

    One matmul over all B*H*W pixels: for these few channels a GEMM and its
    two gradient GEMMs run faster than a 1x1 Conv2D's filter gradient."""
    h, w_, n_c = int_shape(z)[1:]
    out = tf.matmul(tf.reshape(z, [-1, n_c]), w)  # [B*H*W, C]
    return tf.reshape(out, [-1, h, w_, n_c])  # [B, H, W, C]


def invconv(name, z, logdet, reverse=False):
    """Invertible 1x1 convolution with an unconstrained W (paper 3.2, Table 1).

    z: [B, H, W, C]. logdet += H*W*log|det W| (forward), -= (reverse).
    log|det W| and the inverse are computed in float64: with C up to a few
    hundred, float32 LU loses digits that the objective then sees."""
    h, w_, n_c = int_shape(z)[1:]
    with tf.variable_scope(name):
        init = _orthogonal_init(n_c).astype(z.dtype.as_numpy_dtype)
        w = tf.get_variable("W", dtype=z.dtype, initializer=init)
        w64 = tf.cast(w, tf.float64)
        dlogdet = tf.cast(log_abs_det(w64), z.dtype) * (h * w_)
        if not reverse:
            return _conv1x1(z, w), logdet + dlogdet
        w_inv = tf.cast(tf.matrix_inverse(w64), z.dtype)
        return _conv1x1(z, w_inv), logdet - dlogdet


def invconv_lu(name, z, logdet, reverse=False):
    """Invertible 1x1 convolution, LU-decomposed (paper 3.2, eq. 10).

    W = P L (U + diag(sign(s) * exp(log|s|))) with P a fixed permutation, L
    unit lower-triangular, U strictly upper-triangular. log|det W| =
    sum(log|s|): O(C) instead of O(C^3), and never singular while log|s| is
    finite. z: [B, H, W, C]; logdet += H*W*sum(log|s|)."""
    h, w_, n_c = int_shape(z)[1:]
    dtype = z.dtype
    np_dtype = dtype.as_numpy_dtype
    with tf.variable_scope(name):
        np_p, np_l, np_u = scipy.linalg.lu(_orthogonal_init(n_c))
        np_s = np.diag(np_u)
        p = tf.get_variable("P", dtype=dtype, initializer=np_p.astype(np_dtype), trainable=False)
        l_ = tf.get_variable("L", dtype=dtype, initializer=np_l.astype(np_dtype))
        sign_s = tf.get_variable("sign_S", dtype=dtype, initializer=np.sign(np_s).astype(np_dtype), trainable=False)
        log_s = tf.get_variable("log_S", dtype=dtype, initializer=np.log(np.abs(np_s)).astype(np_dtype))
        u = tf.get_variable("U", dtype=dtype, initializer=np.triu(np_u, k=1).astype(np_dtype))

        lower_mask = np.tril(np.ones([n_c, n_c], dtype=np_dtype), -1)
        l_ = l_ * lower_mask + tf.eye(n_c, dtype=dtype)
        u = u * lower_mask.T + tf.matrix_diag(sign_s * tf.exp(log_s))
        dlogdet = tf.reduce_sum(log_s) * (h * w_)
        if not reverse:
            return _conv1x1(z, tf.matmul(p, tf.matmul(l_, u))), logdet + dlogdet
        # W^-1 = U^-1 L^-1 P^T, by two triangular solves in float64.
        eye = tf.eye(n_c, dtype=tf.float64)
        l_inv = tf.matrix_triangular_solve(tf.cast(l_, tf.float64), eye, lower=True)
        u_inv = tf.matrix_triangular_solve(tf.cast(u, tf.float64), eye, lower=False)
        w_inv = tf.matmul(u_inv, tf.matmul(l_inv, tf.cast(tf.transpose(p), tf.float64)))
        return _conv1x1(z, tf.cast(w_inv, dtype)), logdet - dlogdet


PERMUTATIONS = {
    "reverse": reverse_features,
    "shuffle": shuffle_features,
    "invconv": invconv,
    "invconv_lu": invconv_lu,
}

# ---------------------------------------------------------------------------
# Convolutions of the coupling network and priors (openai/glow's NN, paper
# 3.3), computed by kernels.py's `kernels` ("plain" or "cpu")
# ---------------------------------------------------------------------------


def _conv_weights(x, width, filter_size, initializer):
    """W [kh, kw, C (+1 for the edge channel unless 1x1), width]."""
    filter_size = list(filter_size)
    n_in = int_shape(x)[3] + int(filter_size != [1, 1])
    return tf.get_variable("W", filter_size + [n_in, width], x.dtype, initializer=initializer)


def conv2d(name, x, width, filter_size=(3, 3), *, kernels):
    """Edge-padded conv (no bias) followed by actnorm; W ~ N(0, 0.05).

    After init the actnorm is a bias and scale of the conv (kernels.conv);
    data-dependent init needs the conv's own output for its statistics."""
    with tf.variable_scope(name):
        w = _conv_weights(x, width, filter_size, tf.random_normal_initializer(0.0, 0.05))
        if in_ddi_init():
            return actnorm_layer("actnorm", kernels_lib.conv(kernels, x, w))
        bias, logs = actnorm_variables("actnorm", width, x.dtype)
        return kernels_lib.conv(kernels, x, w, bias, tf.exp(logs))


def conv2d_zeros(name, x, width, filter_size=(3, 3), logscale_factor=LOGSCALE_FACTOR, *, kernels):
    """Zero-initialised edge-padded conv with bias and per-channel scale
    exp(3 * logs). Zero init makes each coupling start as the identity (paper
    3.3), which keeps a deep flow trainable from the first step."""
    with tf.variable_scope(name):
        w = _conv_weights(x, width, filter_size, Zeros())
        b = tf.get_variable("b", [width], x.dtype, initializer=Zeros())
        logs = tf.get_variable("logs", [width], x.dtype, initializer=Zeros())
        return kernels_lib.zero_conv(kernels, x, w, b, tf.exp(logs * logscale_factor))


def linear_zeros(name, x, width, logscale_factor=LOGSCALE_FACTOR):
    """Zero-initialised dense layer with per-unit scale exp(3 * logs)."""
    with tf.variable_scope(name):
        n_in = int_shape(x)[1]
        w = tf.get_variable("W", [n_in, width], x.dtype, initializer=Zeros())
        b = tf.get_variable("b", [width], x.dtype, initializer=Zeros())
        logs = tf.get_variable("logs", [width], x.dtype, initializer=Zeros())
        return (tf.matmul(x, w) + b) * tf.exp(logs * logscale_factor)


def coupling_nn(name, h, width, n_out, *, kernels):
    """NN() of the coupling: conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero conv3x3."""
    with tf.variable_scope(name):
        h = tf.nn.relu(conv2d("l_1", h, width, kernels=kernels))
        h = tf.nn.relu(conv2d("l_2", h, width, filter_size=(1, 1), kernels=kernels))
        return conv2d_zeros("l_last", h, n_out, kernels=kernels)


# ---------------------------------------------------------------------------
# Coupling layers (paper 3.3)
# ---------------------------------------------------------------------------


def halves(z):
    """First and second half of the channels. (tf.split: its gradient is a
    concat, where a slice's is a zero-padded copy per half.)"""
    n_c = int_shape(z)[3]
    if n_c % 2:
        raise ValueError("coupling needs an even number of channels, got %d" % n_c)
    return tf.split(z, 2, axis=3)


def _even_odd(h):
    """(h[..., 0::2], h[..., 1::2]) of h [B, H, W, 2C], openai/glow's channel
    layout, as one reshape and unstack (their gradient: one stack)."""
    height, width, n_c = int_shape(h)[1:]
    pairs = tf.reshape(h, [-1, height, width, n_c // 2, 2])  # [B, H, W, C, 2]
    even, odd = tf.unstack(pairs, axis=4)
    return even, odd


def couple_additive(h, z2, logdet, reverse=False):
    """NICE's transform of z2 given h = NN(z1): z2 + h. logdet += 0."""
    return (z2 - h if reverse else z2 + h), logdet


def couple_affine(h, z2, logdet, reverse=False):
    """The affine transform of z2 given h = NN(z1) (paper 3.3): (z2 + shift)
    * scale, with shift and raw scale the even and odd channels of h.

    openai/glow's variant: scale = sigmoid(raw + 2) rather than exp(raw). It
    is bounded in (0, 1), so a step can only contract z2: no exploding
    activations early in training, and at init (h = 0) scale = 0.88, close to
    the identity. Shift is added before scaling. logdet += sum(log scale)."""
    shift, raw = _even_odd(h)
    raw += 2.0
    scale = tf.nn.sigmoid(raw)
    # log(sigmoid(a)) = -softplus(-a): exact and finite even where sigmoid underflows.
    dlogdet = tf.reduce_sum(-tf.nn.softplus(-raw), axis=[1, 2, 3])
    if not reverse:
        return (z2 + shift) * scale, logdet + dlogdet
    return z2 / scale - shift, logdet - dlogdet


# Each coupling: (channels of NN(z1) per channel of z2, its transform of z2).
COUPLINGS = {
    "additive": (1, couple_additive),
    "affine": (2, couple_affine),
}


# ---------------------------------------------------------------------------
# Squeeze and split (paper 3.4, multi-scale architecture of RealNVP)
# ---------------------------------------------------------------------------


def squeeze2d(x, factor=2):
    """Space-to-depth in openai/glow's channel order: out channel c*f*f + dy*f + dx."""
    if factor == 1:
        return x
    h, w, n_c = int_shape(x)[1:]
    if h % factor or w % factor:
        raise ValueError("squeeze2d: spatial shape %dx%d not divisible by %d" % (h, w, factor))
    x = tf.reshape(x, [-1, h // factor, factor, w // factor, factor, n_c])  # [B, H/f, f, W/f, f, C]
    x = tf.transpose(x, [0, 1, 3, 5, 2, 4])  # [B, H/f, W/f, C, f, f]
    return tf.reshape(x, [-1, h // factor, w // factor, n_c * factor * factor])  # [B, H/f, W/f, C*f*f]


def unsqueeze2d(x, factor=2):
    """Inverse of squeeze2d."""
    if factor == 1:
        return x
    h, w, n_c = int_shape(x)[1:]
    if n_c % (factor * factor):
        raise ValueError("unsqueeze2d: %d channels not divisible by %d" % (n_c, factor * factor))
    n_out = n_c // (factor * factor)
    x = tf.reshape(x, [-1, h, w, n_out, factor, factor])  # [B, H, W, C/f^2, f, f]
    x = tf.transpose(x, [0, 1, 4, 2, 5, 3])  # [B, H, f, W, f, C/f^2]
    return tf.reshape(x, [-1, h * factor, w * factor, n_out])  # [B, H*f, W*f, C/f^2]


class GaussianDiag(object):
    """Diagonal Gaussian with mean and log standard deviation of one shape."""

    def __init__(self, mean, logsd):
        self.mean = mean
        self.logsd = logsd

    def logps(self, x):
        """Elementwise log-density."""
        return -0.5 * (np.log(2 * np.pi) + 2.0 * self.logsd + tf.square(x - self.mean) * tf.exp(-2.0 * self.logsd))

    def logp(self, x):
        """Log-density per example, summed over all but the batch axis."""
        return tf.reduce_sum(self.logps(x), axis=list(range(1, len(x.get_shape()))))

    def get_eps(self, x):
        """The standardised noise that `sample(eps)` maps back to x."""
        return (x - self.mean) * tf.exp(-self.logsd)

    def sample(self, eps):
        return self.mean + tf.exp(self.logsd) * eps

    def random_eps(self, temperature=1.0):
        """Standard normal noise of the distribution's shape, times `temperature`
        (a scalar or a [B] tensor: one temperature per example)."""
        eps = tf.random_normal(tf.shape(self.mean), dtype=self.mean.dtype)
        temperature = tf.cast(temperature, self.mean.dtype)
        if temperature.get_shape().ndims == 1:
            temperature = tf.reshape(temperature, [-1, 1, 1, 1])
        return eps * temperature


def split_prior(name, z1, kernels):
    """Learned Gaussian prior of the split-off half, conditioned on the kept
    half z1 through a zero-initialised conv (openai/glow's split2d_prior)."""
    n_c = int_shape(z1)[3]
    h = conv2d_zeros(name + "/conv", z1, 2 * n_c, kernels=kernels)
    return GaussianDiag(*_even_odd(h))


def split2d(name, z, objective, *, kernels):
    """Factor out half the channels (paper 3.4).

    Returns (z1 squeezed, objective + log p(z2 | z1), eps of z2). The eps is
    what `split2d_reverse` needs to rebuild z exactly."""
    z1, z2 = halves(z)
    prior = split_prior(name, z1, kernels)
    return squeeze2d(z1), objective + prior.logp(z2), prior.get_eps(z2)


def split2d_reverse(name, z, eps=None, temperature=1.0, *, kernels):
    """Inverse of split2d: z2 = mean + std * eps with eps given, or drawn and
    scaled by `temperature`. Returns the un-split z."""
    z1 = unsqueeze2d(z)
    prior = split_prior(name, z1, kernels)
    if eps is None:
        eps = prior.random_eps(temperature)
    return tf.concat([z1, prior.sample(eps)], 3)
