"""Every invertible op of tfops.py, in float64: shape kept, exact inverse,
log-dets that cancel, and a log-det equal to slogdet of the true Jacobian."""
import functools
import gc
import weakref

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import model as glow_model
import tfops
from flowcheck import jacobian_rows, randomize_variables, slogdet

SHAPE = [4, 4, 4]  # H, W, C of one example: D = 64
D = int(np.prod(SHAPE))

def _coupling(kind, name, z, logdet, reverse=False):
    """A flow step's coupling (model.FlowStep.coupling) of `kind`, network width 8."""
    step = glow_model.FlowStep(name, tfops.int_shape(z)[3], "invconv", kind, width=8)
    return step.coupling(z, logdet, reverse)


OPS = {
    "actnorm": tfops.actnorm,
    "reverse": tfops.reverse_features,
    "shuffle": tfops.shuffle_features,
    "invconv": tfops.invconv,
    "invconv_lu": tfops.invconv_lu,
    "additive": functools.partial(_coupling, "additive"),
    "affine": functools.partial(_coupling, "affine"),
}


def _scoped(op, z, logdet, reverse):
    with tf.variable_scope("t", reuse=tf.AUTO_REUSE, use_resource=True):
        return op("op", z, logdet, reverse=reverse)


@pytest.mark.parametrize("name", sorted(OPS))
def test_inverse_and_jacobian(name):
    op = OPS[name]
    rng = np.random.RandomState(1)
    x0 = rng.randn(1, *SHAPE)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        x = tf.placeholder(tf.float64, [D] + SHAPE)
        ld0 = tf.placeholder(tf.float64, [D])
        z, ld = _scoped(op, x, ld0, reverse=False)
        x_back, ld_back = _scoped(op, z, ld, reverse=True)
        jac = jacobian_rows(x, z)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            randomize_variables(sess, rng, scale=0.3)
            feed = {x: np.repeat(x0, D, axis=0), ld0: rng.randn(D)}
            z_v, ld_v, xb_v, ldb_v, jac_v = sess.run([z, ld, x_back, ld_back, jac], feed)
    assert z_v.shape == (D,) + tuple(SHAPE)
    np.testing.assert_allclose(xb_v, feed[x], atol=1e-10)
    np.testing.assert_allclose(ldb_v, feed[ld0], atol=1e-10)
    dlogdet = ld_v[0] - feed[ld0][0]
    np.testing.assert_allclose(dlogdet, slogdet(jac_v), rtol=1e-8, atol=1e-8)
    # Couplings and 1x1 convs must mix dimensions here, or the test could not
    # tell a right log-det from a wrong one.
    if name not in ("reverse", "shuffle", "actnorm"):
        assert np.count_nonzero(np.abs(jac_v) > 1e-9) > 2 * D, "Jacobian is (nearly) a permutation"
    if name not in ("reverse", "shuffle", "additive"):
        assert abs(dlogdet) > 1e-3, "log-det is zero: the test would not see a wrong one"


def test_actnorm_init_gives_zero_mean_unit_scale():
    rng = np.random.RandomState(2)
    data = 3.0 + 5.0 * rng.randn(64, *SHAPE) * rng.rand(1, 1, 1, SHAPE[2])
    with tf.Graph().as_default():
        x = tf.constant(data)
        ld = tf.zeros([64], tf.float64)
        with tfops.data_dependent_init():
            z_init, _ = _scoped(tfops.actnorm, x, ld, reverse=False)
        z, _ = _scoped(tfops.actnorm, x, ld, reverse=False)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(z_init)
            z_v = sess.run(z)
    np.testing.assert_allclose(z_v.mean(axis=(0, 1, 2)), 0.0, atol=1e-10)
    np.testing.assert_allclose(z_v.std(axis=(0, 1, 2)), 1.0, rtol=1e-5)


def test_data_dependent_init_is_a_nested_block():
    assert not tfops.in_ddi_init()
    with tfops.data_dependent_init():
        assert tfops.in_ddi_init()
        with tfops.data_dependent_init():
            assert tfops.in_ddi_init()
        assert tfops.in_ddi_init()
    assert not tfops.in_ddi_init()
    with pytest.raises(RuntimeError):
        with tfops.data_dependent_init():
            raise RuntimeError("the block failed")
    assert not tfops.in_ddi_init(), "a failed init pass must not leave the flag on"


def test_squeeze_order_and_inverse():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float64).reshape(2, 4, 4, 3)
    with tf.Graph().as_default(), tf.Session() as sess:
        s = tfops.squeeze2d(tf.constant(x))
        s_v, back = sess.run([s, tfops.unsqueeze2d(s)])
    assert s_v.shape == (2, 2, 2, 12)
    # openai/glow's order: channel c*4 + dy*2 + dx holds x[2i+dy, 2j+dx, c].
    for dy in range(2):
        for dx in range(2):
            for c in range(3):
                np.testing.assert_array_equal(s_v[:, :, :, c * 4 + dy * 2 + dx], x[:, dy::2, dx::2, c])
    np.testing.assert_array_equal(back, x)


def test_split_reverse_with_given_eps_is_exact():
    rng = np.random.RandomState(3)
    x0 = rng.randn(3, *SHAPE)
    with tf.Graph().as_default():
        x = tf.constant(x0)
        with tf.variable_scope("t", reuse=tf.AUTO_REUSE, use_resource=True):
            z1, objective, eps = tfops.split2d("pool", x, tf.zeros([3], tf.float64), kernels="plain")
            back = tfops.split2d_reverse("pool", z1, eps=eps, kernels="plain")
            drawn = tfops.split2d_reverse("pool", z1, temperature=0.0, kernels="plain")
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            randomize_variables(sess, rng, scale=0.3)
            z1_v, obj_v, eps_v, back_v, drawn_v = sess.run([z1, objective, eps, back, drawn])
    assert z1_v.shape == (3, 2, 2, 8)
    np.testing.assert_allclose(back_v, x0, atol=1e-12)
    # The objective is the Gaussian log-density of z2 = mean + std * eps.
    logsd_sum = np.sum(np.log(np.abs((x0[..., 2:] - drawn_v[..., 2:]) / eps_v)), axis=(1, 2, 3))
    expected = np.sum(-0.5 * (np.log(2 * np.pi) + eps_v ** 2), axis=(1, 2, 3)) - logsd_sum
    np.testing.assert_allclose(obj_v, expected, rtol=1e-8)
    # Temperature 0 gives the prior's mean, and keeps the conditioning half.
    np.testing.assert_allclose(drawn_v[..., :2], x0[..., :2], atol=1e-12)


def test_gaussian_logp_matches_scipy():
    from scipy.stats import norm
    rng = np.random.RandomState(4)
    mean, logsd, x = rng.randn(3, 2, 2, 2, 3)
    with tf.Graph().as_default(), tf.Session() as sess:
        logp = sess.run(tfops.GaussianDiag(tf.constant(mean), tf.constant(logsd)).logp(tf.constant(x)))
    expected = norm.logpdf(x, mean, np.exp(logsd)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(logp, expected, rtol=1e-10)


def test_coupling_rejects_odd_channels():
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match="even number of channels, got 3"):
            _scoped(OPS["affine"], tf.zeros([1, 4, 4, 3], tf.float64), tf.zeros([1], tf.float64), False)


def test_a_graph_with_an_invconv_is_freed():
    """Nothing process-wide keeps a graph alive once it is dropped (a
    tf.custom_gradient would: its gradient closure is registered for good),
    so the scratch graphs that a model builds its steps'
    variables in cost nothing after."""
    graph = tf.Graph()
    with graph.as_default():
        z = tf.placeholder(tf.float32, [2, 4, 4, 6])
        z, logdet = tfops.invconv("invconv", z, tf.zeros([2]))
        tf.gradients(logdet, tf.trainable_variables())
    ref = weakref.ref(graph)
    del graph, z, logdet
    gc.collect()
    assert ref() is None


def test_log_abs_det_gradient_matches_tf_and_survives_singular():
    rng = np.random.RandomState(5)
    good = rng.randn(6, 6)
    with tf.Graph().as_default(), tf.Session() as sess:
        w = tf.placeholder(tf.float64, [6, 6])
        ours = tfops.log_abs_det(w)
        ours_grad = tf.gradients(ours, w)[0]
        theirs = tf.linalg.slogdet(w)[1]
        theirs_grad = tf.gradients(theirs, w)[0]
        v, g, tv, tg = sess.run([ours, ours_grad, theirs, theirs_grad], {w: good})
        np.testing.assert_allclose(v, tv, rtol=1e-12)
        np.testing.assert_allclose(g, tg, rtol=1e-10)
        np.testing.assert_allclose(g, np.linalg.inv(good).T, rtol=1e-10)
        # Nearly singular: finite and still right.
        near = good.copy()
        near[0] = near[1] + 1e-7 * rng.randn(6)
        v, g = sess.run([ours, ours_grad], {w: near})
        assert np.isfinite(v) and np.all(np.isfinite(g))
        np.testing.assert_allclose(g, np.linalg.inv(near).T, rtol=1e-5)
        # Singular or NaN: TF's own gradient raises; ours gives a non-finite
        # gradient (the step is skipped) and no exception.
        for bad in (np.zeros((6, 6)), np.full((6, 6), np.nan)):
            with pytest.raises(tf.errors.InvalidArgumentError, match="not invertible"):
                sess.run(theirs_grad, {w: bad})
            g = sess.run(ours_grad, {w: bad})
            assert not np.all(np.isfinite(g))


@pytest.mark.parametrize("initializer,folded", [(tfops.Zeros, False), (tf.zeros_initializer, True)])
def test_zeros_initializer_is_not_folded_into_a_constant(initializer, folded):
    """tfops.Zeros' zeros for a 16 MiB variable are computed when the
    initialiser runs: Grappler does not turn them into a Const of the
    variable's size, which the session would keep with the cached init
    executor. tf.zeros_initializer shows the check sees such a constant."""
    with tf.Graph().as_default():
        v = tf.get_variable("v", [1024, 4096], tf.float32, initializer=initializer(), use_resource=True)
        options = tf.RunOptions(output_partition_graphs=True)
        metadata = tf.RunMetadata()
        with tf.Session() as sess:
            sess.run(v.initializer, options=options, run_metadata=metadata)
            assert not np.any(sess.run(v))
    big = [node.name for g in metadata.partition_graphs for node in g.node if node.op == "Const"
           and np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim]) >= 1024 * 4096]
    assert bool(big) == folded, big
    assert tfops.Zeros().get_config() == tfops.Zeros(tf.float32).get_config() != tfops.Zeros(tf.float64).get_config()
