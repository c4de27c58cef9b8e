"""--loop_steps (looped.py): looped steps give the unrolled model's losses,
gradients (every mode) and data-dependent init on the same variables (one
layout, stacked.py), create them without unrolling, and keep the graph from
growing with depth."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import memory_saving_gradients as msg
import model as glow_model
from test_memory_saving_gradients import BATCH, CHECKPOINTED, IMAGE, _build, _images, _run, losses, small_glow, variant


def looped_glow(glow):
    """The same model with its steps as a tf.while_loop (--loop_steps)."""
    return variant(glow, loop=True)


@pytest.mark.parametrize("permutation,coupling", [("invconv_lu", "affine"), ("shuffle", "additive")])
def test_looped_steps_equal_unrolled_float64(permutation, coupling):
    """loop_steps=True, on the unrolled model's variables (the same ones: one
    layout), gives its loss and, in every mode, its gradients; decode inverts
    encode through the reversed loop. invconv_lu and shuffle bring
    non-trainable float and int variables."""
    glow = small_glow(permutation, coupling)
    looped_model = looped_glow(glow)
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        init, plain, plain_grads = _build(glow, ("none",), seed=3)
        params = tf.trainable_variables()
        x = tf.constant(_images(3))
        loss, grads = {}, {}
        for mode in ("none",) + CHECKPOINTED:
            loss[mode] = tf.reduce_mean(losses(glow, x, None, mode, loop=True)["loss"])
            grads[mode] = msg.gradients(loss[mode], params, mode=mode)
        assert tf.trainable_variables() == params  # no variable of its own
        errors = {m: msg.reconstruction_error(loss[m]) for m in CHECKPOINTED}
        x_float = looped_model.preprocess(x)
        round_trip = tf.reduce_max(tf.abs(looped_model.decode(looped_model.encode(x_float).eps) - x_float))
        out = _run(init, {"plain": plain["none"], "plain_grads": plain_grads["none"], "losses": loss,
                          "grads": grads, "errors": errors, "round_trip": round_trip}, seed=3)
    assert out["round_trip"] < 1e-10
    assert out["errors"]["recompute"] == 0.0
    assert 0.0 < out["errors"]["invertible"] < 1e-9, out["errors"]
    for mode in ("none",) + CHECKPOINTED:
        assert out["losses"][mode] == pytest.approx(out["plain"], rel=1e-12)
        for v, ours, plain_g in zip(params, out["grads"][mode], out["plain_grads"]):
            assert np.max(np.abs(plain_g)) > 0
            np.testing.assert_allclose(ours, plain_g, rtol=1e-9, atol=1e-12 * np.max(np.abs(plain_g)),
                                       err_msg="%s %s" % (mode, v.op.name))


@pytest.mark.parametrize("permutation,coupling", [("invconv_lu", "affine"), ("shuffle", "additive")])
def test_looped_init_equals_unrolled_float64(permutation, coupling, monkeypatch):
    """The looped data-dependent init sets every actnorm (flow steps' and
    coupling convs') of every step to the unrolled init pass's statistics,
    and returns its loss: each pass run from the same initial values. (The
    init pass dequantises: its noise, drawn by two different ops, is set to
    half a bin here.)"""
    monkeypatch.setattr(glow_model.Glow, "dequantize", lambda self, x: x + 0.5 / self.n_bins)
    glow = small_glow(permutation, coupling)
    looped_model = looped_glow(glow)
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        x = tf.constant(_images(3))
        unrolled_init = glow.init_op(x, None)
        looped_init = looped_model.init_op(x, None)
        variables = tf.global_variables()
        stats = [v for v in variables if "/actnorm/" in v.op.name]
        assert len(stats) == 2 * 2 * 3  # b and logs, 2 levels x (step, l_1, l_2), each stacked over the 3 steps
        assert all(v.get_shape().as_list()[0] == 3 for v in stats)
        results = []
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            start = sess.run(variables)
            assert not any(np.any(v) for v in sess.run(stats))  # zeros before init
            for init in (unrolled_init, looped_init):
                for v, value in zip(variables, start):  # the same random conv weights for both passes
                    v.load(value, sess)
                results.append((sess.run(init), sess.run(stats)))
    (unrolled_loss, expected), (looped_loss, ours) = results
    assert looped_loss == pytest.approx(unrolled_loss, rel=1e-12)
    for v, a, b in zip(stats, expected, ours):
        assert np.all(np.max(np.abs(a.reshape(len(a), -1)), axis=1) > 0), v.op.name  # every step's row set
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12, err_msg=v.op.name)


def test_looped_init_creates_the_variables_without_unrolling():
    """Built first, the looped model creates the unrolled model's variables
    (names, shapes, and the NumPy-drawn initial values of the 1x1 convs, row
    by row), and its init graph does not grow with depth the way an unrolled
    one does."""
    def init_graph(glow):
        graph = tf.Graph()
        with graph.as_default():
            tf.set_random_seed(1)
            glow.init_op(tf.constant(_images(0)), None)
            variables = tf.global_variables()
            with tf.Session() as sess:
                sess.run(tf.global_variables_initializer())
                values = dict(zip([v.op.name for v in variables], sess.run(variables)))
        return len(graph.get_operations()), values

    n_unrolled, unrolled = init_graph(small_glow())
    n_looped, looped_model = init_graph(looped_glow(small_glow()))
    assert sorted(looped_model) == sorted(unrolled)
    assert sum(name.endswith("invconv/W") for name in looped_model) == 2
    for name, value in unrolled.items():
        assert looped_model[name].shape == value.shape, name
        if name.endswith("invconv/W"):
            np.testing.assert_array_equal(looped_model[name], value, err_msg=name)
    growth_unrolled = n_unrolled - init_graph(small_glow(depth=2))[0]
    growth_looped = n_looped - init_graph(looped_glow(small_glow(depth=2)))[0]
    assert growth_looped < 0.5 * growth_unrolled, (growth_looped, growth_unrolled)


@pytest.mark.parametrize("mode", ("none", "invertible"))
def test_looped_graph_does_not_grow_with_depth(mode):
    """The point of loop_steps: the training graph (loss and gradients) holds
    one step's ops per level and one stacked variable per variable of the
    step, whatever the depth. Unrolled, every step adds its ops."""
    def n_ops(depth, loop_steps):
        glow = glow_model.Glow(IMAGE, n_levels=2, depth=depth, width=8, coupling="affine")
        glow = variant(glow, loop=True) if loop_steps else glow
        with tf.Graph().as_default() as graph:
            x = tf.constant(_images(0))
            glow.init_op(x, None)
            n_init = len(graph.get_operations())
            loss = tf.reduce_mean(losses(glow, x, None, mode, loop=loop_steps)["loss"])
            msg.gradients(loss, tf.trainable_variables(), mode=mode)
            return len(graph.get_operations()) - n_init, len(tf.global_variables())

    # One more step per level: hundreds of ops (about 600 with mode 'none').
    unrolled_growth = n_ops(2, False)[0] - n_ops(1, False)[0]
    assert unrolled_growth > 250
    assert n_ops(2, True) == n_ops(1, True)


@pytest.mark.parametrize("mode", ("none",) + CHECKPOINTED)
def test_looped_flow_reads_whole_stacked_variables(mode):
    """The loops gather each step's rows from one read of each stacked
    variable (an alias of its buffer, not a copy), in every graph: no
    weight values are stacked (a copy of the level's weights), and the
    variables are not read row by row by their handles either (one way to
    read them, not both)."""
    glow = looped_glow(small_glow(dtype=tf.float32))
    with tf.Graph().as_default() as graph:
        x = tf.constant(_images(0))
        glow.init_op(x, None)
        loss = tf.reduce_mean(losses(glow, x, None, mode, loop=True)["loss"])
        msg.gradients(loss, tf.trainable_variables(), mode=mode)
        glow.sample(tf.zeros([BATCH], tf.int32))
        ops = graph.get_operations()
    sparse = [op.name for op in ops if op.type.startswith(("ResourceGather", "ResourceScatter", "ResourceSparse"))]
    assert sparse == []
    stacked = [op.name for op in ops if op.type == "Pack" and op.inputs[0].op.type == "ReadVariableOp"]
    assert stacked == []
    in_loops = [op for op in ops if op.type == "GatherV2" and op.inputs[0].op.type == "Enter"]
    assert len(in_loops) > 10
