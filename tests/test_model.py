"""The whole multi-level Glow on a tiny input (8x8x2, 2 levels), in float64:
exact round trip, the log-det of the full flow against the true Jacobian,
the objective's terms, sampling, and one set of shared weights."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import model as glow_model
import tfops
from flowcheck import jacobian_rows, randomize_variables, slogdet

IMAGE = (8, 8, 2)
D = int(np.prod(IMAGE))


def tiny_glow(permutation="invconv", coupling="affine", **kwargs):
    params = dict(n_levels=2, depth=2, width=8, permutation=permutation, coupling=coupling, dtype=tf.float64)
    params.update(kwargs)
    return glow_model.Glow(IMAGE, **params)


COMBOS = [(p, "affine") for p in sorted(tfops.PERMUTATIONS)] + [("invconv", "additive"), ("shuffle", "additive")]


@pytest.mark.parametrize("permutation,coupling", COMBOS)
def test_flow_round_trip_and_jacobian(permutation, coupling):
    """decode inverts encode; x -> eps (every level's standardised noise) is
    a change of variables to N(0, I): log p(x) (the objective) = log N(eps)
    + log|det d eps/dx|, the latter from the true Jacobian. It holds only if
    the flow's log-det and every prior's log-density are right."""
    glow = tiny_glow(permutation, coupling, learntop=True)
    rng = np.random.RandomState(0)
    x0 = rng.uniform(-0.5, 0.5, size=(1,) + IMAGE)
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        x = tf.placeholder(tf.float64, (D,) + IMAGE)
        enc = glow.encode(x)
        x_back = glow.decode(enc.eps)
        eps = glow.flatten(enc.eps)  # [D, D]
        jac = jacobian_rows(x, eps)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            randomize_variables(sess, rng, scale=0.2)
            objective, eps_v, back, jac_v = sess.run([enc.objective, eps, x_back, jac], {x: np.repeat(x0, D, axis=0)})
    assert [e.get_shape().as_list()[1:] for e in enc.eps] == [[4, 4, 4], [2, 2, 16]]
    np.testing.assert_allclose(back, np.repeat(x0, D, axis=0), atol=1e-9)
    log_normal = -0.5 * np.sum(eps_v[0] ** 2) - 0.5 * D * np.log(2 * np.pi)
    # Float64 on both sides. A relative error e in the Jacobian's entries (each a backprop through ~50 ops: e ~
    # 50 u = 6e-15) moves log|det J| by at most n e cond(J) = 128 x 6e-15 x 5.3e7 (the largest cond here) = 4e-5,
    # against |objective| >= 650: 7e-8 at worst. Seen: 5.1e-16 relative (TF 2.21 and TF 1.15, every combo).
    np.testing.assert_allclose(objective[0], log_normal + slogdet(jac_v), rtol=1e-7)
    assert np.count_nonzero(np.abs(jac_v) > 1e-9) > 4 * D


def test_objective_terms_and_bits():
    glow = tiny_glow(learntop=True)
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, size=(5,) + IMAGE).astype(np.uint8)
    with tf.Graph().as_default():
        x_u8 = tf.constant(images)
        stats = glow.losses(x_u8, tf.zeros([5], tf.int32), dequantize=False)
        enc = glow.encode(glow.preprocess(x_u8))
        top = glow.top_prior(None, 5)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            randomize_variables(sess, rng, scale=0.2)
            s, enc_objective, logdet, z, top_mean, top_logsd = sess.run(
                [stats, enc.objective, enc.logdet, enc.z, top.mean, top.logsd])
    # log p(x) = flow log-dets + split priors (checked op by op in test_tfops)
    # + top prior (recomputed here in numpy) - D log(n_bins).
    log_top = np.sum(-0.5 * (np.log(2 * np.pi) + 2 * top_logsd
                             + (z - top_mean) ** 2 * np.exp(-2 * top_logsd)), axis=(1, 2, 3))
    assert np.std(top_mean) > 0, "learntop prior is still zero: the test would not see it"
    np.testing.assert_allclose(s["objective"], enc_objective - np.log(glow.n_bins) * D, rtol=1e-12)
    split_terms = enc_objective - logdet - log_top
    assert np.all(np.isfinite(split_terms)) and np.all(np.abs(split_terms) > 1.0)
    np.testing.assert_allclose(s["bits_x"], -s["objective"] / (np.log(2.0) * D), rtol=1e-12)
    np.testing.assert_allclose(s["loss"], s["bits_x"])
    np.testing.assert_array_equal(s["pred_loss"], 1.0)


def test_untrained_bits_per_dim_is_near_uniform():
    """At init (zero-initialised couplings and priors, identity-like flow after
    data-dependent init) a model of uniform 8-bit noise sits near 8 bits/dim."""
    glow = glow_model.Glow((8, 8, 1), n_levels=2, depth=2, width=8)
    rng = np.random.RandomState(2)
    images = rng.randint(0, 256, size=(256, 8, 8, 1)).astype(np.uint8)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        y = tf.zeros([256], tf.int32)
        init = glow.init_op(tf.constant(images), y)
        bits = tf.reduce_mean(glow.losses(tf.constant(images), y)["bits_x"])
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(init)
            value = sess.run(bits)
    # Uniform data in [-0.5, 0.5) has entropy 8 bits/dim; a unit Gaussian on
    # actnorm-whitened data costs 0.5*log2(2*pi*e) + log2(std) per dim.
    expected = 0.5 * np.log2(2 * np.pi * np.e) + np.log2(np.sqrt(1 / 12.0)) + 8
    assert abs(value - expected) < 0.15, (value, expected)


def test_ycond_learntop_round_trip_and_classifier():
    glow = tiny_glow(learntop=True, ycond=True, n_y=3, weight_y=0.5)
    rng = np.random.RandomState(3)
    x0 = rng.uniform(-0.5, 0.5, size=(4,) + IMAGE)
    labels = np.array([0, 1, 2, 1], np.int32)
    with tf.Graph().as_default():
        x = tf.constant(x0)
        y = tf.constant(labels)
        enc = glow.encode(x, y)
        back = glow.decode(enc.eps, y)
        stats = glow.losses(glow.postprocess(x), y)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            randomize_variables(sess, rng, scale=0.2)
            back_v, s = sess.run([back, stats])
    np.testing.assert_allclose(back_v, x0, atol=1e-9)
    np.testing.assert_allclose(s["loss"], s["bits_x"] + 0.5 * s["bits_y"])
    assert np.all(s["bits_y"] > 0) and set(np.unique(s["pred_loss"])) <= {0.0, 1.0}


def test_sampling_temperature_and_shared_weights():
    glow = tiny_glow(learntop=True)
    with tf.Graph().as_default():
        tf.set_random_seed(4)
        images = tf.constant(np.random.RandomState(4).randint(0, 256, (16,) + IMAGE).astype(np.uint8))
        y = tf.zeros([16], tf.int32)
        init = glow.init_op(images, y)
        n_vars = len(tf.global_variables())
        glow.losses(images, y)
        cold = glow.sample(tf.zeros([6], tf.int32), temperature=0.0)
        warm = glow.sample(tf.zeros([6], tf.int32), temperature=tf.fill([6], 0.7))
        assert len(tf.global_variables()) == n_vars, "a later graph made new variables"
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(init)
            cold1, cold2, warm1 = sess.run([cold, cold, warm])
    assert cold1.dtype == np.uint8 and cold1.shape == (6,) + IMAGE
    np.testing.assert_array_equal(cold1, cold2)  # temperature 0: the mode, no randomness
    assert np.any(cold1[0] != warm1[0])


@pytest.mark.parametrize("kwargs,message", [
    (dict(permutation="rotate"), "permutation 'rotate'"),
    (dict(coupling="spline"), "coupling 'spline'"),
    (dict(n_levels=4), "divisible by 2\\*\\*n_levels = 16"),
    (dict(n_bits_x=9), "n_bits_x 9"),
    (dict(ycond=True, n_y=1), "n_y 1"),
])
def test_bad_hyperparameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_glow(**kwargs)


@pytest.mark.parametrize("n_levels", [1, 2, 3])
def test_eps_shapes_and_flat_latent(n_levels):
    """Glow.eps_shapes (from the hyperparameters) are the encoding's; flatten/unflatten are inverses."""
    glow = tiny_glow(n_levels=n_levels, learntop=True)
    x0 = np.random.RandomState(0).uniform(-0.5, 0.5, (2,) + IMAGE)
    with tf.Graph().as_default():
        x = tf.constant(x0)
        enc = glow.encode(x)
        flat = glow.flatten(enc.eps)
        again = glow.unflatten(flat)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            eps, flat_v, again_v = sess.run([enc.eps, flat, again])
    assert [list(e.shape[1:]) for e in eps] == glow.eps_shapes and flat_v.shape == (2, D)
    for e, a in zip(eps, again_v):
        np.testing.assert_array_equal(e, a)


@pytest.mark.parametrize("permutation", ["invconv", "invconv_lu"])
def test_conv1x1_constants_are_the_same_model(permutation):
    """An export's model (tfops.conv1x1_constant, with W, W^-1 and log|det W| computed once from the weights the
    CONV1X1 collection lists) gives the trained graph's objective and inverse, with no determinant or inverse op."""
    glow = tiny_glow(permutation, learntop=True)
    rng = np.random.RandomState(2)
    x0 = rng.uniform(-0.5, 0.5, (3,) + IMAGE)
    with tf.Graph().as_default() as graph:
        x = tf.constant(x0)
        enc = glow.encode(x)
        records = tf.get_collection(tfops.CONV1X1)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            randomize_variables(sess, rng, scale=0.2)
            values = sess.run([(w, inverse(), log_det) for _, w, inverse, log_det in records])
            constants = dict((r[0], tuple(np.asarray(v) for v in value)) for r, value in zip(records, values))
            frozen = tiny_glow(permutation, learntop=True, conv1x1_constants=constants)
            enc2 = frozen.encode(x)
            back, back_ref = frozen.decode(enc2.eps), glow.decode(enc.eps)
            want, got, back_v, back_ref_v = sess.run([enc.objective, enc2.objective, back, back_ref])
        used = tf.graph_util.extract_sub_graph(graph.as_graph_def(), [enc2.objective.op.name, back.op.name])
    assert len(constants) == 2 * 2  # levels x depth
    # The same float64 ops on the same values, W^-1 and log|det W| computed once instead of in the graph: equal
    # but for the order a kernel may sum in (seen: equal to the bit, both stacks).
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # (How close either comes back to x0 is the model's own round trip, test_flow_round_trip's: these random
    # weights scale some channels by sigmoid(-large), which costs the inverse digits.)
    np.testing.assert_allclose(back_v, back_ref_v, rtol=1e-12, atol=1e-15)
    assert not set(n.op for n in used.node) & {"MatrixInverse", "LogMatrixDeterminant", "MatrixTriangularSolve"}
