"""Glow's building blocks in portable TF1 graph code (Kingma & Dhariwal 2018).

The invertible ops on a whole tensor (actnorm, the permutations, the 1x1 convolutions) share one contract,
op(name, z, logdet, reverse=False) -> (z, logdet), with z [B, H, W, C] and logdet the per-example
log|det dz_out/dz_in| [B]: computed once, added forward and subtracted in reverse, so reverse(forward(z)) gives back
z and the incoming logdet. The couplings' halves (couple_additive/couple_affine: z2 given the network's output h)
keep the (z, logdet) pair with h as an extra input; split2d is not of this kind (it moves half of z into the
objective under a prior), and its signatures say so. Variables take z's dtype (float32 to train, float64 in the
Jacobian tests). Variable scope names are checkpoint keys: never change them.
"""
import abc
import contextlib
import threading
import zlib

import numpy as np
import scipy.linalg
import tensorflow.compat.v1 as tf

import kernels as kernels_lib

# -- the data-dependent init pass (paper 3.1) -------------------------------------------

_init_pass = threading.local()


@contextlib.contextmanager
def data_dependent_init():
    """Within the block, actnorm layers being built return their data-dependent initial values (and assign
    them) instead of their variables: the graph of the init pass."""
    before = in_ddi_init()
    _init_pass.on = True
    try:
        yield
    finally:
        _init_pass.on = before


def in_ddi_init():
    """True inside `data_dependent_init()`."""
    return getattr(_init_pass, "on", False)


# -- shapes and variables --------------------------------------------------------


def int_shape(x):
    """Static shape as a list of ints, -1 for unknown dimensions."""
    return [-1 if d is None else int(d) for d in x.get_shape().as_list()]


def layer_rng():
    """A numpy RNG for initial values computed in numpy (1x1 conv weights, shuffle indices), fixed by the graph
    seed and the variable scope (one stream per layer), independent of numpy's global state."""
    scope = tf.get_variable_scope().name
    graph_seed = tf.get_default_graph().seed or 0
    return np.random.RandomState((zlib.crc32(scope.encode("utf-8")) + 7919 * graph_seed) % (2 ** 32))


class Zeros(object):
    """Initializer of zeros computed when the initialiser runs. Grappler folds tf.zeros_initializer's zeros into a
    Const of the variable's size, which the session keeps for its lifetime (for the optimizer slots, the weights'
    size again); a fill from a PlaceholderWithDefault is not folded (above about 10 MiB)."""

    def __init__(self, dtype=tf.float32):
        self.dtype = tf.as_dtype(dtype)

    def __call__(self, shape, dtype=None, partition_info=None):
        zero = tf.placeholder_with_default(tf.zeros([], tf.as_dtype(dtype or self.dtype)), [])
        return tf.fill(shape, zero)

    def get_config(self):
        return {"dtype": self.dtype.name}


class DataDependent(Zeros):
    """The initializer of variables that data-dependent init sets (actnorm's): zeros until then. It also marks
    them for custom getters: looped.py's returns an object whose `assign` collects a loop iteration's values."""


def get_variable_ddi(name, shape, initial_value, dtype, trainable=True):
    """`tf.get_variable`, or in the init pass (`data_dependent_init()`) a tensor that first assigns
    `initial_value`."""
    w = tf.get_variable(name, shape, dtype, initializer=DataDependent(), trainable=trainable)
    if not in_ddi_init():
        return w
    assigned = w.assign(tf.reshape(tf.cast(initial_value, dtype), shape))
    with tf.control_dependencies([assigned]):
        return tf.identity(assigned)


# -- actnorm (paper 3.1) -------------------------------------------------------------

LOGSCALE_FACTOR = 3.0


def actnorm_params(name, x, n_c, dtype):
    """Actnorm's per-channel (bias [C], logs [C]). The init pass sets them from x [B, H, W, C] over batch and
    positions: bias = -mean(x), exp(logs) = 1/(std + 1e-6); no other pass reads x (None will do). logs is stored
    divided by LOGSCALE_FACTOR (openai/glow): its learning rate times 3."""
    init = in_ddi_init()
    with tf.variable_scope(name):
        bias = get_variable_ddi("b", [n_c], -tf.reduce_mean(x, [0, 1, 2]) if init else None, dtype)
        std = tf.sqrt(tf.reduce_mean(tf.square(x + bias), [0, 1, 2])) if init else None
        logs = get_variable_ddi("logs", [n_c], -tf.log(std + 1e-6) / LOGSCALE_FACTOR if init else None, dtype)
    return bias, logs * LOGSCALE_FACTOR


def actnorm(name, z, logdet, reverse=False):
    """Activation normalisation (paper 3.1): z -> (z + b) * exp(logs). logdet += H*W*sum(logs)."""
    h, w, n_c = int_shape(z)[1:]
    bias, logs = actnorm_params(name, z, n_c, z.dtype)
    dlogdet = tf.reduce_sum(logs) * (h * w)
    if not reverse:
        return (z + bias) * tf.exp(logs), logdet + dlogdet
    return z * tf.exp(-logs) - bias, logdet - dlogdet


# -- permutations (paper 3.2; the ablation of section 5.1) ---------------------------


def reverse_features(name, z, logdet, reverse=False):
    """Reverse the channel order (RealNVP's fixed permutation; its own inverse, no parameters). logdet += 0."""
    return z[:, :, :, ::-1], logdet


def shuffle_features(name, z, logdet, reverse=False):
    """A fixed random channel permutation in a non-trainable variable: a checkpoint restores its own. logdet += 0."""
    with tf.variable_scope(name):
        perm = layer_rng().permutation(int_shape(z)[-1]).astype("int32")
        indices = tf.get_variable("indices", dtype=tf.int32, initializer=perm, trainable=False)
        if reverse:
            indices = tf.invert_permutation(indices)
        return tf.gather(z, indices, axis=3), logdet


def _orthogonal_init(n):
    """A random rotation (the paper's 1x1 conv init, section 3.2)."""
    return np.linalg.qr(layer_rng().randn(n, n))[0]


@tf.RegisterGradient("GlowLogAbsDet")
def _log_abs_det_grad(op, _dsign, dvalue):
    """log_abs_det's gradient: w^-T where the value is finite, else NaN."""
    w, value = op.inputs[0], op.outputs[1]
    ok = tf.is_finite(value)
    inv = tf.matrix_inverse(tf.cond(ok, lambda: w, lambda: tf.eye(int(w.get_shape()[0]), dtype=w.dtype)))
    nan_if_singular = tf.cond(ok, lambda: tf.constant(1.0, w.dtype), lambda: tf.constant(np.nan, w.dtype))
    return dvalue * tf.transpose(inv) * nan_if_singular


def log_abs_det(w):
    """log|det w| of a square float64 matrix, with a gradient that never raises. TF's gradients of
    matrix_determinant and slogdet raise "Input is not invertible" on a singular or NaN w, which killed openai/glow's
    runs. The value is slogdet's (LU with partial pivoting: exact for nearly singular w, -inf for singular); the
    gradient w^-T is NaN where the value is not finite, so the optimizer skips the step instead. It is registered once
    as a gradient override: tf.custom_gradient would register a closure per call, process-wide, keeping every graph
    that calls it alive."""
    with tf.get_default_graph().gradient_override_map({"LogMatrixDeterminant": "GlowLogAbsDet"}):
        return tf.linalg.slogdet(w)[1]


# Graph collection of every forward 1x1 convolution: (its variable scope's name, W, a function building W^-1 in
# float64, log|det W|), what an export computes once from the trained weights (conv1x1_constant).
CONV1X1 = "glow_conv1x1"


def _conv1x1(z, logdet, w, inverse, log_det_w, reverse):
    """z [B, H, W, C] times w [C, C] on every pixel (out[c'] = sum_c z[c] w[c, c']), or times inverse() in
    reverse; logdet +-= H*W*log_det_w. One matmul over all pixels: for these few channels a GEMM and its two
    gradient GEMMs beat a 1x1 Conv2D's filter gradient."""
    h, w_, n_c = int_shape(z)[1:]
    if not reverse:
        tf.add_to_collection(CONV1X1, (tf.get_variable_scope().name, w, inverse, log_det_w))
    dlogdet = tf.cast(log_det_w, z.dtype) * (h * w_)
    if reverse:
        w, dlogdet = tf.cast(inverse(), z.dtype), -dlogdet
    out = tf.matmul(tf.reshape(z, [-1, n_c]), w)  # [B*H*W, C]
    return tf.reshape(out, [-1, h, w_, n_c]), logdet + dlogdet  # [B, H, W, C]


def invconv(name, z, logdet, reverse=False):
    """Invertible 1x1 convolution with an unconstrained W (paper 3.2, Table 1).

    z: [B, H, W, C]. logdet += H*W*log|det W| (forward), -= (reverse). log|det W| and W^-1 are computed in
    float64: with C up to a few hundred, a float32 LU loses digits that the objective then sees."""
    with tf.variable_scope(name):
        init = _orthogonal_init(int_shape(z)[3]).astype(z.dtype.as_numpy_dtype)
        w = tf.get_variable("W", dtype=z.dtype, initializer=init)
        w64 = tf.cast(w, tf.float64)
        return _conv1x1(z, logdet, w, lambda: tf.matrix_inverse(w64), log_abs_det(w64), reverse)


def invconv_lu(name, z, logdet, reverse=False):
    """Invertible 1x1 convolution, LU-decomposed (paper 3.2, eq. 10).

    W = P L (U + diag(sign(s) * exp(log|s|))), P a fixed permutation, L unit lower-triangular, U strictly
    upper-triangular: log|det W| = sum(log|s|), O(C) instead of O(C^3) and never singular while log|s| is finite.
    z: [B, H, W, C]; logdet += H*W*sum(log|s|)."""
    n_c, dtype, np_dtype = int_shape(z)[3], z.dtype, z.dtype.as_numpy_dtype
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

        def inverse():
            """W^-1 = U^-1 L^-1 P^T, by two triangular solves in float64."""
            eye = tf.eye(n_c, dtype=tf.float64)
            l_inv = tf.matrix_triangular_solve(tf.cast(l_, tf.float64), eye, lower=True)
            u_inv = tf.matrix_triangular_solve(tf.cast(u, tf.float64), eye, lower=False)
            return tf.matmul(u_inv, tf.matmul(l_inv, tf.cast(tf.transpose(p), tf.float64)))

        w = None if reverse else tf.matmul(p, tf.matmul(l_, u))
        return _conv1x1(z, logdet, w, inverse, tf.reduce_sum(log_s), reverse)


def conv1x1_constant(name, z, logdet, reverse=False, *, constants):
    """An invertible 1x1 convolution whose W, W^-1 and log|det W| were computed once from trained weights (an
    export; CONV1X1 lists them): constants {variable scope name: (W, W^-1, log|det W|)} as NumPy values. The graph
    then holds no determinant, inverse or float64 op, which the Ascend NPU lacks. logdet +-= H*W*log|det W|."""
    with tf.variable_scope(name):
        w, w_inv, log_det = constants[tf.get_variable_scope().name]
        dtype = z.dtype.as_numpy_dtype
        return _conv1x1(z, logdet, tf.constant(w.astype(dtype)), lambda: tf.constant(w_inv.astype(dtype)),
                        np.asarray(log_det, dtype), reverse)


PERMUTATIONS = {"reverse": reverse_features, "shuffle": shuffle_features, "invconv": invconv, "invconv_lu": invconv_lu}

# -- the coupling network and priors' convs (openai/glow's NN, paper 3.3), by kernels.py --


def _w_shape(x, width, filter_size):
    """[kh, kw, C (+1 for the edge channel unless 1x1), width]."""
    filter_size = list(filter_size)
    return filter_size + [int_shape(x)[3] + int(filter_size != [1, 1]), width]


def _zero_init(w_shape, dtype):
    """W, b and scale exp(3 logs) of a layer that starts as the zero function."""
    w, b, logs = [tf.get_variable(name, shape, dtype, initializer=Zeros())
                  for name, shape in (("W", w_shape), ("b", w_shape[-1:]), ("logs", w_shape[-1:]))]
    return w, b, tf.exp(logs * LOGSCALE_FACTOR)


def conv2d(name, x, width, filter_size=(3, 3), *, kernels):
    """Edge-padded conv (no bias), W ~ N(0, 0.05), then actnorm, computed as the conv's bias and scale except in
    the init pass, whose statistics are of the conv's own output."""
    with tf.variable_scope(name):
        w = tf.get_variable("W", _w_shape(x, width, filter_size), x.dtype, tf.random_normal_initializer(0.0, 0.05))
        y = kernels_lib.conv(kernels, x, w) if in_ddi_init() else None
        bias, logs = actnorm_params("actnorm", y, width, x.dtype)
        if y is not None:
            return (y + bias) * tf.exp(logs)
        return kernels_lib.conv(kernels, x, w, bias, tf.exp(logs))


def conv2d_zeros(name, x, width, filter_size=(3, 3), *, kernels):
    """Zero-initialised edge-padded conv with bias and scale exp(3 logs): each coupling starts as the identity
    (paper 3.3), which keeps a deep flow trainable from the first step."""
    with tf.variable_scope(name):
        return kernels_lib.zero_conv(kernels, x, *_zero_init(_w_shape(x, width, filter_size), x.dtype))


def linear_zeros(name, x, width):
    """Zero-initialised dense layer with bias and scale exp(3 logs)."""
    with tf.variable_scope(name):
        w, b, scale = _zero_init([int_shape(x)[1], width], x.dtype)
        return (tf.matmul(x, w) + b) * scale


def coupling_nn(name, h, width, n_out, *, kernels):
    """NN() of the coupling: conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero conv3x3."""
    with tf.variable_scope(name):
        h = tf.nn.relu(conv2d("l_1", h, width, kernels=kernels))
        h = tf.nn.relu(conv2d("l_2", h, width, filter_size=(1, 1), kernels=kernels))
        return conv2d_zeros("l_last", h, n_out, kernels=kernels)


# -- coupling layers (paper 3.3) -------------------------------------------------------


def halves(z):
    """The channels' two halves by tf.split, whose gradient is a concat (a slice's: a zero-padded copy per half)."""
    n_c = int_shape(z)[3]
    if n_c % 2:
        raise ValueError("coupling needs an even number of channels, got %d" % n_c)
    return tf.split(z, 2, axis=3)


def _even_odd(h):
    """(h[..., 0::2], h[..., 1::2]) of h [B, H, W, 2C] (openai/glow's layout): reshape, unstack (gradient: a stack)."""
    height, width, n_c = int_shape(h)[1:]
    pairs = tf.reshape(h, [-1, height, width, n_c // 2, 2])  # [B, H, W, C, 2]
    return tf.unstack(pairs, axis=4)


def couple_additive(h, z2, logdet, reverse=False):
    """NICE's transform of z2 given h = NN(z1): z2 + h. logdet += 0."""
    return (z2 - h if reverse else z2 + h), logdet


def couple_affine(h, z2, logdet, reverse=False):
    """z2 -> (z2 + shift) * scale given h = NN(z1) (paper 3.3), shift and raw scale the even and odd channels of
    h. scale = sigmoid(raw + 2), not exp(raw) (openai/glow): bounded in (0, 1), so a step only contracts (no
    exploding activations early on), and 0.88 at init (h = 0), near the identity. logdet += sum(log scale)."""
    shift, raw = _even_odd(h)
    raw += 2.0
    scale = tf.nn.sigmoid(raw)
    # log(sigmoid(a)) = -softplus(-a): exact and finite even where sigmoid underflows.
    dlogdet = tf.reduce_sum(-tf.nn.softplus(-raw), axis=[1, 2, 3])
    if not reverse:
        return (z2 + shift) * scale, logdet + dlogdet
    return z2 / scale - shift, logdet - dlogdet


# Each coupling: (channels of NN(z1) per channel of z2, its transform of z2).
COUPLINGS = {"additive": (1, couple_additive), "affine": (2, couple_affine)}


class CouplingStep(abc.ABC):
    """A flow step that ends in a coupling, by parts: step(z, logdet, reverse) is `prefix` (the ops before the
    coupling), then [z1, couple(nn(z1), z2)] of the prefix's halves (paper 3.3). memory_saving_gradients'
    invertible mode uses the parts to run the network once per step backward (model.FlowStep is one)."""

    @abc.abstractmethod
    def __call__(self, z, logdet, reverse=False):
        """The whole step, of the (z, logdet) contract."""

    @abc.abstractmethod
    def prefix(self, z, logdet, reverse=False):
        """The ops before the coupling, in the step's variable scope."""

    @abc.abstractmethod
    def nn(self, z1):
        """The coupling network, z1 -> h, in the step's variable scope."""

    @abc.abstractmethod
    def couple(self, h, z2, logdet, reverse=False):
        """z2 given h -> (z2', logdet), with no variables of its own."""

# -- squeeze and split (paper 3.4, RealNVP's multi-scale architecture) -----------------


def squeeze2d(x, factor=2):
    """Space-to-depth in openai/glow's channel order: out channel c*f*f + dy*f + dx."""
    h, w, n_c = int_shape(x)[1:]
    if h % factor or w % factor:
        raise ValueError("squeeze2d: spatial shape %dx%d not divisible by %d" % (h, w, factor))
    x = tf.reshape(x, [-1, h // factor, factor, w // factor, factor, n_c])  # [B, H/f, f, W/f, f, C]
    x = tf.transpose(x, [0, 1, 3, 5, 2, 4])  # [B, H/f, W/f, C, f, f]
    return tf.reshape(x, [-1, h // factor, w // factor, n_c * factor * factor])  # [B, H/f, W/f, C*f*f]


def unsqueeze2d(x, factor=2):
    """Inverse of squeeze2d."""
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
        self.mean, self.logsd = mean, logsd

    def logp(self, x):
        """Log-density per example, summed over all but the batch axis."""
        logps = -0.5 * (np.log(2 * np.pi) + 2.0 * self.logsd + tf.square(x - self.mean) * tf.exp(-2.0 * self.logsd))
        return tf.reduce_sum(logps, axis=list(range(1, len(x.get_shape()))))

    def get_eps(self, x):
        """The standardised noise that `sample(eps)` maps back to x."""
        return (x - self.mean) * tf.exp(-self.logsd)

    def sample(self, eps):
        return self.mean + tf.exp(self.logsd) * eps

    def random_eps(self, temperature=1.0):
        """Standard normal noise of the distribution's shape times `temperature` (a scalar, or [B]: per example)."""
        eps = tf.random_normal(tf.shape(self.mean), dtype=self.mean.dtype)
        temperature = tf.cast(temperature, self.mean.dtype)
        if temperature.get_shape().ndims == 1:
            temperature = tf.reshape(temperature, [-1, 1, 1, 1])
        return eps * temperature


def split_prior(name, z1, kernels):
    """Learned Gaussian prior of the split-off half given the kept half z1 (openai/glow's split2d_prior)."""
    return GaussianDiag(*_even_odd(conv2d_zeros(name + "/conv", z1, 2 * int_shape(z1)[3], kernels=kernels)))


def split2d(name, z, objective, *, kernels):
    """Split off half the channels (paper 3.4): (squeezed z1, objective + log p(z2|z1), z2's eps, which rebuilds z2)."""
    z1, z2 = halves(z)
    prior = split_prior(name, z1, kernels)
    return squeeze2d(z1), objective + prior.logp(z2), prior.get_eps(z2)


def split2d_reverse(name, z, eps=None, temperature=1.0, *, kernels):
    """Inverse of split2d: the un-split z, with z2 = mean + std * eps, eps given or drawn at `temperature`."""
    z1 = unsqueeze2d(z)
    prior = split_prior(name, z1, kernels)
    eps = prior.random_eps(temperature) if eps is None else eps
    return tf.concat([z1, prior.sample(eps)], 3)
