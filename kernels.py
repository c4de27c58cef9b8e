"""The coupling network's convolutions, in two implementations of one function.

Every conv of the coupling networks and priors is openai/glow's edge-padded conv: zero-pad x, add an input channel
that is 1 on the padding (so the network can tell padding from a real zero), a 'VALID' conv, then a bias and a
per-channel scale: y = (conv(edge_pad(x), W) + bias) * scale.

'plain' is exactly that with tf.nn.conv2d: the reference, and the default on GPU and NPU, whose convolution units
are built for it. 'cpu' computes the same function, on the same variables, with matmuls that suit a CPU's GEMM: the
scale folded into W and bias, im2col, per-tap products, the edge channel's part as a constant map (equal to float
rounding: tests/test_kernels.py). `for_device` picks one; `--kernels` overrides it.
"""
import numpy as np
import tensorflow.compat.v1 as tf

import utils

KINDS = ("plain", "cpu")


def for_device(device, requested="auto"):
    """`requested` unless "auto", else "cpu" on a CPU and "plain" elsewhere."""
    if requested != "auto":
        return check(requested)
    return "cpu" if device == "cpu" else "plain"


def check(kind):
    return utils.check_choice("kernels", kind, KINDS)


def _shape(x):
    return x.get_shape().as_list()


def conv(kind, x, w, bias=None, scale=None):
    """(conv(edge_pad(x), w) + bias) * scale, for x [B, H, W, C] and w [kh, kw, C + 1, N] ([1, 1, C, N] for a 1x1
    filter: no padding); bias and scale [N] or None. Returns [B, H, W, N]. On 'cpu' an im2col matmul for the coupling
    network's first convs (few input channels), with its bias on the matmul's output for Grappler to fuse with ReLU."""
    if check(kind) == "plain":
        return _plain(x, w, bias, scale)
    if scale is not None:
        w, bias = w * scale, bias * scale
    kh, kw, n_c, n_out = _shape(w)
    x = add_edge_padding(x, [kh, kw])
    h, w_ = _shape(x)[1] - kh + 1, _shape(x)[2] - kw + 1
    if kh * kw > 1:  # the kh*kw shifted views, tap-major: w's row order as [kh*kw*C, N]
        x = tf.concat([_window(x, dy, dx, h, w_) for dy in range(kh) for dx in range(kw)], axis=3)
    y = tf.matmul(tf.reshape(x, [-1, kh * kw * n_c]), tf.reshape(w, [kh * kw * n_c, n_out]))  # [B*H*W, N]
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, [-1, h, w_, n_out])  # [B, H, W, N]


def zero_conv(kind, x, w, bias, scale):
    """`conv`'s function, with bias and scale given. On 'cpu' for the zero-initialised last convs (many input channels,
    few output channels): u = x @ [w_0 | ... | w_{kh*kw-1}], one GEMM with N = kh*kw*n_out where a conv's gradients are
    GEMMs with N = n_out, gives every tap's contribution at every pixel; the output sums each tap's block shifted by its
    offset. The edge channel's part is a conv of a constant [1, H, W, 1] map: x is never padded or concatenated."""
    if check(kind) == "plain":
        return _plain(x, w, bias, scale)
    kh, kw, _, n_out = _shape(w)
    h, w_, n_c = _shape(x)[1:]
    w, bias = w * scale, bias * scale
    taps = tf.reshape(tf.transpose(w[:, :, :n_c], [2, 0, 1, 3]), [n_c, kh * kw * n_out])  # [C, (dy, dx, n)]
    u = tf.matmul(tf.reshape(x, [-1, n_c]), taps)  # [B*H*W, kh*kw*N]
    u = tf.reshape(u, [-1, h, w_, kh * kw * n_out])  # [B, H, W, kh*kw*N]
    if kh * kw == 1:
        return tf.nn.bias_add(u, bias)
    a, b = (kh - 1) // 2, (kw - 1) // 2
    u = tf.pad(u, [[0, 0], [a, a], [b, b], [0, 0]])  # [B, H+2a, W+2b, kh*kw*N]
    blocks = tf.split(u, kh * kw, axis=3)
    out = tf.add_n([_window(blocks[dy * kw + dx], dy, dx, h, w_) for dy in range(kh) for dx in range(kw)])
    indicator = tf.constant(_edge_indicator((kh, kw), h, w_, x.dtype))
    return out + (tf.nn.conv2d(indicator, w[:, :, n_c:], [1, 1, 1, 1], "VALID") + bias)


def _plain(x, w, bias, scale):
    y = tf.nn.conv2d(add_edge_padding(x, _shape(w)[:2]), w, [1, 1, 1, 1], "VALID")
    if bias is not None:
        y += bias
    return y if scale is None else y * scale


def _edge_indicator(filter_size, h, w, dtype):
    """[1, h + 2a, w + 2b, 1]: 1 on the zero padding of a (2a+1, 2b+1) 'VALID' conv over an h x w image, 0 inside."""
    a, b = (filter_size[0] - 1) // 2, (filter_size[1] - 1) // 2
    pad = np.ones([1, h + 2 * a, w + 2 * b, 1], dtype=dtype.as_numpy_dtype)
    pad[:, a:a + h, b:b + w, :] = 0.0
    return pad


def add_edge_padding(x, filter_size):
    """x [B, H, W, C] zero-padded for a 'VALID' conv with an odd filter, plus a channel that is 1 on the padding:
    [B, H + 2a, W + 2b, C + 1]. A 1x1 filter needs no padding: x itself."""
    if len(filter_size) != 2 or filter_size[0] % 2 == 0 or filter_size[1] % 2 == 0:
        raise ValueError("filter_size %r: expected two odd sizes (edge padding is symmetric)" % (filter_size,))
    a, b = (filter_size[0] - 1) // 2, (filter_size[1] - 1) // 2
    if a == 0 and b == 0:
        return x
    h, w = _shape(x)[1:3]
    x = tf.pad(x, [[0, 0], [a, a], [b, b], [0, 0]])
    pad = tf.tile(tf.constant(_edge_indicator(filter_size, h, w, x.dtype)), [tf.shape(x)[0], 1, 1, 1])
    return tf.concat([x, pad], axis=3)


def _window(x, dy, dx, h, w):
    """x[:, dy:dy+h, dx:dx+w, :] as tf.slice, whose gradient is a Pad (indexing's StridedSliceGrad is slower on CPU)."""
    return tf.slice(x, [0, dy, dx, 0], [-1, h, w, -1])
