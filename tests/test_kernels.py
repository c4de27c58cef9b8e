"""kernels.py: the plain (tf.nn.conv2d) and CPU-tuned convolutions compute
one function. In float64, on the same variables: each conv layer's output
and gradients, and the whole model's objective (so log-determinants), its
gradients and its inverse, for every coupling and permutation."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import kernels
import model as glow_model
import tfops
from flowcheck import randomize_variables

IMAGE = (8, 8, 2)
BATCH = 3


@pytest.mark.parametrize("layer", ["conv2d", "conv2d_zeros"])
@pytest.mark.parametrize("filter_size", [(3, 3), (1, 1), (3, 1)])
def test_conv_layers_agree(layer, filter_size):
    rng = np.random.RandomState(0)
    with tf.Graph().as_default():
        x = tf.constant(rng.randn(BATCH, 5, 6, 3))
        out = {}
        for kind in kernels.KINDS:
            with tf.variable_scope("t", reuse=tf.AUTO_REUSE, use_resource=True):
                y = getattr(tfops, layer)("c", x, 4, filter_size, kernels=kind)
            out[kind] = [y] + tf.gradients(tf.reduce_sum(tf.sin(y)), [x] + tf.trainable_variables())
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            randomize_variables(sess, rng, scale=0.3)  # zero convs would hide a wrong bias or scale
            plain, cpu = sess.run([out["plain"], out["cpu"]])
    assert plain[0].shape == (BATCH, 5, 6, 4)
    for name, a, b in zip(["output", "d x"] + ["d var %d" % i for i in range(len(plain) - 2)], plain, cpu):
        assert np.max(np.abs(a)) > 1e-3, name
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12, err_msg=name)


# The kernels compute the couplings' and priors' convs: both couplings (with
# two of the permutations; the permutations themselves use no kernel).
@pytest.mark.parametrize("permutation,coupling", [("invconv", "affine"), ("invconv_lu", "additive")])
def test_whole_model_agrees(permutation, coupling):
    """Data-dependent init with the plain kernels, then both: the same
    objective, gradients and decode(encode(x)) = x."""
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, (BATCH,) + IMAGE).astype(np.uint8)
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        x = tf.constant(images)
        y = tf.constant([0, 1, 2], tf.int32)
        models = dict((kind, glow_model.Glow(IMAGE, n_levels=2, depth=2, width=8, permutation=permutation,
                                             coupling=coupling, learntop=True, ycond=True, n_y=3,
                                             dtype=tf.float64, kernels=kind))
                      for kind in kernels.KINDS)
        init = models["plain"].init_op(x, y)
        out = {}
        for kind, glow in models.items():
            x_float = glow.preprocess(x) + 0.5 / glow.n_bins
            enc = glow.encode(x_float, y)
            grads = tf.gradients(tf.reduce_sum(enc.objective), tf.trainable_variables())
            back = glow.decode(enc.eps, y)
            out[kind] = [enc.objective, enc.logdet, tf.reduce_max(tf.abs(back - x_float))] + grads
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(init)
            randomize_variables(sess, rng, scale=0.05)
            plain, cpu = sess.run([out["plain"], out["cpu"]])
    assert plain[2] < 1e-9 and cpu[2] < 1e-9
    assert np.max(np.abs(plain[1])) > 1e-3  # the log-dets are not trivially zero
    for i, (a, b) in enumerate(zip(plain, cpu)):
        if i != 2:
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-10 * max(1.0, np.max(np.abs(a))), err_msg=str(i))


def test_kernels_follow_the_device():
    assert kernels.for_device("cpu") == "cpu"
    assert kernels.for_device("gpu") == "plain"
    assert kernels.for_device("npu") == "plain"
    assert kernels.for_device("cpu", "plain") == "plain"
    with pytest.raises(ValueError, match="kernels 'fast': expected one of plain, cpu"):
        kernels.for_device("gpu", "fast")


def _edge_padded(x, filter_size):
    """openai/glow's add_edge_padding, written again: zeros around x
    [B, H, W, C] for a 'VALID' conv, and a channel that is 1 on them."""
    a, b = (filter_size[0] - 1) // 2, (filter_size[1] - 1) // 2
    if a == 0 and b == 0:
        return x
    h, w = x.get_shape().as_list()[1:3]
    indicator = np.zeros([1, h + 2 * a, w + 2 * b, 1])
    indicator[:, :a] = indicator[:, h + a:] = indicator[:, :, :b] = indicator[:, :, w + b:] = 1.0
    indicator = np.repeat(indicator, x.get_shape().as_list()[0], axis=0)
    return tf.concat([tf.pad(x, [[0, 0], [a, a], [b, b], [0, 0]]), tf.constant(indicator)], axis=3)


@pytest.mark.parametrize("kind", kernels.KINDS)
def test_layers_are_openai_glows(kind):
    """Each layer is the function openai/glow defined: edge-padded 'VALID'
    conv, then actnorm (conv2d) or bias and exp(3 logs) scale (conv2d_zeros)."""
    rng = np.random.RandomState(0)
    for filter_size in ((3, 3), (1, 1), (3, 5)):
        with tf.Graph().as_default():
            x = tf.constant(rng.randn(2, 6, 5, 3))
            with tf.variable_scope("t", use_resource=True):
                ours = [tfops.conv2d("c", x, 7, filter_size, kernels=kind),
                        tfops.conv2d_zeros("z", x, 4, filter_size, kernels=kind)]
            var = {v.op.name[2:]: v for v in tf.global_variables()}
            padded = _edge_padded(x, filter_size)
            conv = tf.nn.conv2d(padded, var["c/W"], [1, 1, 1, 1], "VALID")
            ref = [(conv + var["c/actnorm/b"]) * tf.exp(3.0 * var["c/actnorm/logs"]),
                   (tf.nn.conv2d(padded, var["z/W"], [1, 1, 1, 1], "VALID") + var["z/b"])
                   * tf.exp(3.0 * var["z/logs"])]
            with tf.Session() as sess:
                for v in var.values():
                    v.load(rng.randn(*v.get_shape().as_list()) * 0.3, sess)
                ours_v, ref_v = sess.run([ours, ref])
        for a, b in zip(ours_v, ref_v):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
