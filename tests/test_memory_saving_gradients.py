"""Gradient checkpointing (memory_saving_gradients.py) on a small Glow: each
mode's gradients equal the plain ones, the backward pass holds on to nothing
of the forward pass but its checkpoints, and invertible backprop's rebuilt
inputs match the forward ones to float rounding."""
import functools

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import memory_saving_gradients as msg
import looped
import model as glow_model
from flowcheck import randomize_variables

IMAGE = (8, 8, 2)
BATCH = 4
CHECKPOINTED = ("recompute", "invertible")


def small_glow(permutation="invconv", coupling="affine", dtype=tf.float64, depth=3):
    return glow_model.Glow(IMAGE, n_levels=2, depth=depth, width=8, permutation=permutation, coupling=coupling,
                           learntop=True, dtype=dtype)


def variant(glow, mode="none", loop=False):
    """The same model (same variables) whose flow steps' gradient is
    `mode`'s, unrolled or looped (--loop_steps), as Trainer builds it."""
    return glow.with_steps((looped.looped_steps if loop else msg.checkpointed_steps)(mode))


def losses(glow, x, y, mode, loop=False):
    """The per-example losses of the graph built for `mode`'s gradients."""
    return variant(glow, mode, loop).losses(x, y, dequantize=False)


def _images(seed):
    return np.random.RandomState(seed).randint(0, 256, (BATCH,) + IMAGE).astype(np.uint8)


def _build(glow, modes, seed=0):
    """Init graph, then one loss and its gradients per mode, on one set of
    weights (as Trainer builds them)."""
    x = tf.constant(_images(seed))
    y = tf.zeros([BATCH], tf.int32)
    init = glow.init_op(x, y)
    loss, grads = {}, {}
    for mode in modes:
        loss[mode] = tf.reduce_mean(losses(glow, x, y, mode)["loss"])
        grads[mode] = msg.gradients(loss[mode], tf.trainable_variables(), mode=mode)
    return init, loss, grads


def _run(init, fetches, seed=0, scale=0.05, then=None):
    """Run `fetches` after init, with every trainable variable moved off the
    init point: the zero-initialised convs (last layer of each coupling, the
    priors) must not be zero, or their gradients say little. `then`: an op
    run after that."""
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(init)
        randomize_variables(sess, np.random.RandomState(seed), scale)
        if then is not None:
            sess.run(then)
        return sess.run(fetches)


# Both couplings, and a 1x1 conv of each kind; test_looped checks every mode
# again with shuffle, which brings non-trainable int variables.
COMBOS = [("invconv", "affine"), ("invconv_lu", "additive")]


@pytest.mark.parametrize("permutation,coupling", COMBOS)
def test_gradients_equal_plain_float64(permutation, coupling):
    glow = small_glow(permutation, coupling)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        init, losses, grads = _build(glow, ("none",) + CHECKPOINTED)
        names = [v.name for v in tf.trainable_variables()]
        out = _run(init, {"losses": losses, "grads": grads})
    assert len(names) > 20  # 2 levels' stacked variables: the test compares each
    for mode in CHECKPOINTED:
        assert out["losses"][mode] == pytest.approx(out["losses"]["none"], rel=1e-12)
        assert all(g is not None for g in grads[mode]), mode
        for name, plain, ours in zip(names, out["grads"]["none"], out["grads"][mode]):
            assert np.max(np.abs(plain)) > 0, name
            np.testing.assert_allclose(ours, plain, rtol=1e-9, atol=1e-12 * np.max(np.abs(plain)),
                                       err_msg="%s %s" % (mode, name))


def test_gradients_equal_plain_float32():
    """The training dtype: the same to float32 rounding (the affine inverse
    divides by the coupling's scale, which loses a few more bits)."""
    glow = small_glow(dtype=tf.float32)
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        init, losses, grads = _build(glow, ("none",) + CHECKPOINTED, seed=1)
        errors = {m: msg.reconstruction_error(losses[m]) for m in CHECKPOINTED}
        out = _run(init, {"grads": grads, "errors": errors}, seed=1)
    for mode in CHECKPOINTED:
        for plain, ours in zip(out["grads"]["none"], out["grads"][mode]):
            np.testing.assert_allclose(ours, plain, rtol=2e-3, atol=2e-4 * np.max(np.abs(plain)) + 1e-12)
    assert out["errors"]["recompute"] == 0.0
    # Relative to the inputs' size; float32 rounding amplified by the affine
    # inverses (about 1e-6 here on either stack).
    assert 0.0 < out["errors"]["invertible"] < 1e-3, out["errors"]


def test_invertible_reconstruction_error_float64():
    """Rebuilt inputs equal the forward ones to float64 rounding, on a model
    whose own decode(encode(x)) is exact. (Invertible backprop is only as good
    as the inverse: with larger random weights an affine scale can reach
    1e-9, and then the inverse itself, and so the rebuilt inputs, lose every
    digit.)"""
    glow = small_glow(permutation="invconv_lu", coupling="affine")
    with tf.Graph().as_default():
        tf.set_random_seed(2)
        init, losses, _ = _build(glow, ("invertible",), seed=2)
        error = msg.reconstruction_error(losses["invertible"])
        x = glow.preprocess(tf.constant(_images(2)))
        round_trip = tf.reduce_max(tf.abs(glow.decode(glow.encode(x).eps) - x))
        value, round_trip = _run(init, [error, round_trip], seed=2, scale=0.02)
    assert round_trip < 1e-12
    assert 0.0 < value < 1e-12, value


@functools.lru_cache(maxsize=None)
def _checkpointed(mode):
    """(glow, graph): a float32 small_glow's loss and `mode`'s gradients,
    built once for the tests that only read the graph."""
    glow = small_glow(dtype=tf.float32)
    graph = tf.Graph()
    with graph.as_default():
        _build(glow, (mode,))
    return glow, graph


def _forward_ops(record):
    """The ops a checkpointed level built for its forward pass: those under its name scope (its custom gradient's
    IdentityN's) created before that IdentityN."""
    ops = record.op.graph.get_operations()
    scope = record.op.name.rsplit("/", 1)[0] + "/"
    return [op for op in ops[:ops.index(record.op)] if op.name.startswith(scope)]


@pytest.mark.parametrize("mode", CHECKPOINTED)
def test_backward_pass_keeps_only_the_checkpoints(mode):
    """What the backward pass reads of a checkpointed flow's forward ops is
    exactly what the mode keeps: every step's input ('recompute'), or only the
    level's output ('invertible'). Anything else would stay in memory until the
    backward pass, as in plain backprop."""
    glow, graph = _checkpointed(mode)
    with graph.as_default():
        flows = tf.get_collection(msg.COLLECTION)
        assert len(flows) == glow.n_levels
        for record in flows:
            forward_ops = _forward_ops(record)
            assert len(forward_ops) > 20 * glow.depth, "the forward ops were not found: the test would pass"
            forward = set(op.name for op in forward_ops)
            read_outside = set()
            for op in forward_ops:
                for t in op.outputs:
                    if any(c.name not in forward and c is not record.op for c in t.consumers()):
                        read_outside.add(t.name)
            level_output = record.op.inputs[0].name
            kept = set(t.name for t in record.step_inputs[1:]) if mode == "recompute" else {level_output}
            assert read_outside == kept, (record.op.name, sorted(read_outside ^ kept))
            # Each step is recomputed in the backward pass, after the gradient of its output.
            assert sorted(record.backward_inputs) == list(range(glow.depth))


def test_recomputation_waits_for_the_backward_pass():
    """The recomputed step's input depends on the gradient of the step's
    output (a control dependency), so it cannot be scheduled in the forward
    pass, where it would keep everything alive again."""
    with _checkpointed("recompute")[1].as_default():
        records = tf.get_collection(msg.COLLECTION)
        assert records
        for record in records:
            for z_in in record.backward_inputs.values():
                op = z_in.op  # StopGradient <- Identity with the control input
                while not op.control_inputs:
                    op = op.inputs[0].op
                assert any("gradients" in c.name for c in op.control_inputs), op.control_inputs


def test_mode_mismatch_is_an_error():
    glow = small_glow(dtype=tf.float32, depth=1)
    with tf.Graph().as_default():
        x = tf.constant(_images(0))
        plain = tf.reduce_mean(glow.losses(x, None, dequantize=False)["loss"])
        wrapped = tf.reduce_mean(losses(glow, x, None, "invertible")["loss"])
        params = tf.trainable_variables()
        with pytest.raises(ValueError, match="built with checkpointing 'none'"):
            msg.gradients(plain, params, mode="recompute")
        with pytest.raises(ValueError, match="built with checkpointing invertible"):
            msg.gradients(wrapped, params, mode="none")
        with pytest.raises(ValueError, match="built with checkpointing invertible"):
            msg.gradients(wrapped, params, mode="recompute")
        with pytest.raises(ValueError, match="expected one of none, recompute, invertible"):
            msg.gradients(plain, params, mode="2")
        with pytest.raises(ValueError, match="build the gradients"):
            msg.reconstruction_error(wrapped)
        assert len(msg.gradients(wrapped, params, mode="invertible")) == len(params)
