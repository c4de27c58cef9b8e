"""Gradient checkpointing (memory_saving_gradients.py) on a small Glow: each
mode's gradients equal the plain ones, the backward pass holds on to nothing
of the forward pass but its checkpoints, and invertible backprop's rebuilt
inputs match the forward ones to float rounding."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import memory_saving_gradients as msg
import model as glow_model

IMAGE = (8, 8, 2)
BATCH = 4
CHECKPOINTED = ("recompute", "invertible")


def small_glow(permutation="invconv", coupling="affine", dtype=tf.float64, depth=3):
    return glow_model.Glow(IMAGE, n_levels=2, depth=depth, width=8, permutation=permutation, coupling=coupling,
                           learntop=True, dtype=dtype)


def _images(seed):
    return np.random.RandomState(seed).randint(0, 256, (BATCH,) + IMAGE).astype(np.uint8)


def _build(glow, modes, seed=0):
    """Init graph, then one loss and its gradients per mode, on one set of
    weights (as Trainer builds them)."""
    x = tf.constant(_images(seed))
    y = tf.zeros([BATCH], tf.int32)
    init = glow.init_op(x, y)
    losses, grads = {}, {}
    for mode in modes:
        losses[mode] = tf.reduce_mean(glow.losses(x, y, dequantize=False, checkpointing=mode)["loss"])
        grads[mode] = msg.gradients(losses[mode], tf.trainable_variables(), mode=mode)
    return init, losses, grads


def _run(init, fetches, seed=0, scale=0.05, then=None):
    """Run `fetches` after init, with every trainable variable moved off the
    init point: the zero-initialised convs (last layer of each coupling, the
    priors) must not be zero, or their gradients say little. (One run for all
    variables: flowcheck.randomize_variables loads them one by one, which
    takes seconds per graph of this size.) `then`: an op run after that."""
    params = tf.trainable_variables()
    noise = [tf.placeholder(v.dtype.base_dtype, v.get_shape()) for v in params]
    move = tf.group(*[v.assign_add(n) for v, n in zip(params, noise)])
    rng = np.random.RandomState(seed)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(init)
        sess.run(move, {n: scale * rng.randn(*n.get_shape().as_list()) for n in noise})
        if then is not None:
            sess.run(then)
        return sess.run(fetches)


COMBOS = [("invconv", "affine"), ("invconv_lu", "additive"), ("shuffle", "affine"), ("reverse", "additive")]


@pytest.mark.parametrize("permutation,coupling", COMBOS)
def test_gradients_equal_plain_float64(permutation, coupling):
    glow = small_glow(permutation, coupling)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        init, losses, grads = _build(glow, ("none",) + CHECKPOINTED)
        names = [v.name for v in tf.trainable_variables()]
        out = _run(init, {"losses": losses, "grads": grads})
    assert len(names) > 30
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
    glow = small_glow(dtype=tf.float32, depth=4)
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
    # inverses (TF 1.15: about 2e-4 here, TF 2.x: 1e-6).
    assert 0.0 < out["errors"]["invertible"] < 1e-3, out["errors"]


def test_invertible_reconstruction_error_float64():
    """Rebuilt inputs equal the forward ones to float64 rounding, on a model
    whose own decode(encode(x)) is exact. (Invertible backprop is only as good
    as the inverse: with larger random weights an affine scale can reach
    1e-9, and then the inverse itself, and so the rebuilt inputs, lose every
    digit.)"""
    glow = small_glow(permutation="invconv_lu", coupling="affine", depth=6)
    with tf.Graph().as_default():
        tf.set_random_seed(2)
        init, losses, _ = _build(glow, ("invertible",), seed=2)
        error = msg.reconstruction_error(losses["invertible"])
        x = glow.preprocess(tf.constant(_images(2)))
        round_trip = tf.reduce_max(tf.abs(glow.decode(glow.encode(x).eps) - x))
        value, round_trip = _run(init, [error, round_trip], seed=2, scale=0.02)
    assert round_trip < 1e-12
    assert 0.0 < value < 1e-12, value


@pytest.mark.parametrize("mode", CHECKPOINTED)
def test_backward_pass_keeps_only_the_checkpoints(mode):
    """What the backward pass reads of a checkpointed flow's forward ops is
    exactly what the mode keeps: every step's input ('recompute'), or only the
    level's output ('invertible'). Anything else would stay in memory until the
    backward pass, as in plain backprop."""
    glow = small_glow(dtype=tf.float32)
    with tf.Graph().as_default():
        _build(glow, (mode,))
        flows = tf.get_collection(msg._COLLECTION)
        assert len(flows) == glow.n_levels
        for record in flows:
            forward = set(op.name for op in record.forward_ops)
            read_outside = set()
            for op in record.forward_ops:
                for t in op.outputs:
                    if any(c.name not in forward and c is not record.op for c in t.consumers()):
                        read_outside.add(t.name)
            level_output = record.op.inputs[0].name
            kept = set(t.name for t in record.step_inputs[1:]) if mode == "recompute" else {level_output}
            assert read_outside == kept, (record.scope_name, sorted(read_outside ^ kept))
            # Each step is recomputed in the backward pass, after the gradient of its output.
            assert sorted(record.backward_inputs) == list(range(glow.depth))


def test_recomputation_waits_for_the_backward_pass():
    """The recomputed step's input depends on the gradient of the step's
    output (a control dependency), so it cannot be scheduled in the forward
    pass, where it would keep everything alive again."""
    glow = small_glow(dtype=tf.float32)
    with tf.Graph().as_default():
        _build(glow, ("recompute",))
        for record in tf.get_collection(msg._COLLECTION):
            for z_in in record.backward_inputs.values():
                op = z_in.op  # StopGradient <- Identity with the control input
                while not op.control_inputs:
                    op = op.inputs[0].op
                assert any("gradients" in c.name for c in op.control_inputs), op.control_inputs


def test_mode_mismatch_is_an_error():
    glow = small_glow(dtype=tf.float32)
    with tf.Graph().as_default():
        x = tf.constant(_images(0))
        plain = tf.reduce_mean(glow.losses(x, None, dequantize=False)["loss"])
        wrapped = tf.reduce_mean(glow.losses(x, None, dequantize=False, checkpointing="invertible")["loss"])
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


def looped_glow(glow):
    """The same model with its steps as a tf.while_loop (Glow(loop_steps=True))."""
    return glow_model.Glow(glow.image_shape, n_levels=glow.n_levels, depth=glow.depth, width=glow.width,
                           permutation=glow.permutation, coupling=glow.coupling, learntop=glow.learntop,
                           dtype=glow.dtype, loop_steps=True)


def as_looped(values, stack=np.stack):
    """{unrolled variable name: value} -> {looped name: value}: each step
    variable's values stacked over the steps (model.step_key)."""
    out, rows = {}, {}
    for name, value in values.items():
        key = glow_model.step_key(name)
        if key is None:
            out[name] = value
        else:
            rows.setdefault(key[0], {})[key[1]] = value
    for name, steps in rows.items():
        assert sorted(steps) == list(range(len(steps))), (name, sorted(steps))
        out[name] = stack([steps[i] for i in range(len(steps))])
    return out


def copy_unrolled_into_looped():
    """An op giving the looped build's stacked step variables the values of
    the unrolled build's, in a graph that holds both."""
    by_name = dict((v.op.name, v) for v in tf.global_variables())
    stacked = as_looped(dict((name, tf.convert_to_tensor(v)) for name, v in by_name.items()
                             if glow_model.step_key(name) is not None), stack=tf.stack)
    assert stacked and all(name in by_name for name in stacked), sorted(set(stacked) - set(by_name))
    return tf.group(*[by_name[name].assign(value) for name, value in stacked.items()])


def test_step_key():
    assert glow_model.step_key("model/0/3/actnorm/b") == ("model/0/step/actnorm/b", 3)
    assert glow_model.step_key("ema/model/2/11/f1/l_1/W/m") == ("ema/model/2/step/f1/l_1/W/m", 11)
    assert glow_model.step_key("model/pool0/conv/W") is None
    assert glow_model.step_key("model/0/step/actnorm/b") is None


@pytest.mark.parametrize("permutation,coupling", [("invconv_lu", "affine"), ("shuffle", "additive")])
def test_looped_steps_equal_unrolled_float64(permutation, coupling):
    """loop_steps=True, given the unrolled model's weights (each step
    variable stacked over the steps), gives its loss and, in every mode, its
    gradients (stacked the same way); decode inverts encode through the
    reversed loop. invconv_lu and shuffle bring non-trainable float and int
    variables."""
    glow = small_glow(permutation, coupling)
    looped = looped_glow(glow)
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        init, plain, plain_grads = _build(glow, ("none",), seed=3)
        unrolled_params = [v.op.name for v in tf.trainable_variables()]
        x = tf.constant(_images(3))
        losses, grads = {}, {}
        for mode in ("none",) + CHECKPOINTED:
            losses[mode] = tf.reduce_mean(looped.losses(x, None, dequantize=False, checkpointing=mode)["loss"])
            params = [v for v in tf.trainable_variables() if glow_model.step_key(v.op.name) is None]
            grads[mode] = msg.gradients(losses[mode], params, mode=mode)
        looped_params = [v.op.name for v in params]
        assert set(looped_params) == set(as_looped(dict.fromkeys(unrolled_params, 0)))
        errors = {m: msg.reconstruction_error(losses[m]) for m in CHECKPOINTED}
        x_float = looped.preprocess(x)
        round_trip = tf.reduce_max(tf.abs(looped.decode(looped.encode(x_float).eps) - x_float))
        out = _run(init, {"plain": plain["none"], "plain_grads": plain_grads["none"], "losses": losses,
                          "grads": grads, "errors": errors, "round_trip": round_trip}, seed=3,
                   then=copy_unrolled_into_looped())
    assert out["round_trip"] < 1e-10
    assert out["errors"]["recompute"] == 0.0
    assert 0.0 < out["errors"]["invertible"] < 1e-9, out["errors"]
    expected = as_looped(dict(zip(unrolled_params, out["plain_grads"])))
    for mode in ("none",) + CHECKPOINTED:
        assert out["losses"][mode] == pytest.approx(out["plain"], rel=1e-12)
        for name, ours in zip(looped_params, out["grads"][mode]):
            plain_g = expected[name]
            assert np.max(np.abs(plain_g)) > 0
            np.testing.assert_allclose(ours, plain_g, rtol=1e-9, atol=1e-12 * np.max(np.abs(plain_g)),
                                       err_msg="%s %s" % (mode, name))


@pytest.mark.parametrize("permutation,coupling", [("invconv_lu", "affine"), ("shuffle", "additive")])
def test_looped_init_equals_unrolled_float64(permutation, coupling, monkeypatch):
    """The looped data-dependent init sets every actnorm (flow steps' and
    coupling convs') of every step to the unrolled init pass's statistics,
    and returns its loss. (The init pass dequantises: its noise, drawn by
    two different ops, is set to half a bin here.)"""
    monkeypatch.setattr(glow_model.Glow, "dequantize", lambda self, x: x + 0.5 / self.n_bins)
    glow = small_glow(permutation, coupling)
    looped = looped_glow(glow)
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        x = tf.constant(_images(3))
        unrolled_init = glow.init_op(x, None)
        looped_init = looped.init_op(x, None)
        copy = copy_unrolled_into_looped()
        stats = [v for v in tf.global_variables() if "/actnorm/" in v.op.name]
        unrolled_stats = [v.op.name for v in stats if glow_model.step_key(v.op.name) is not None]
        looped_stats = [v for v in stats if "/step/" in v.op.name]
        assert len(unrolled_stats) == 2 * 2 * 3 * 3  # b and logs, 2 levels x 3 steps x (step, l_1, l_2)
        assert len(looped_stats) == 2 * 2 * 3  # the same stacked over the steps
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            assert not any(np.any(v) for v in sess.run(stats))  # zeros before init
            sess.run(copy)  # the same random conv weights for both passes
            losses = sess.run([unrolled_init, looped_init])
            values = dict(zip([v.op.name for v in stats], sess.run(stats)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    expected = as_looped(dict((name, values[name]) for name in unrolled_stats))
    for v in looped_stats:
        a, b = expected[v.op.name], values[v.op.name]
        assert np.all(np.max(np.abs(a.reshape(len(a), -1)), axis=1) > 0), v.op.name  # every step's row set
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12, err_msg=v.op.name)


def test_looped_init_creates_the_variables_without_unrolling():
    """Built first, the looped model creates the unrolled model's variables,
    each step variable stacked over the steps (names, shapes, and the
    NumPy-drawn initial values of the 1x1 convs, row by row), and its init
    graph does not grow with depth the way an unrolled one does."""
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
    n_looped, looped = init_graph(looped_glow(small_glow()))
    unrolled = as_looped(unrolled)
    assert sorted(looped) == sorted(unrolled)
    assert sum(name.endswith("invconv/W") for name in looped) == 2
    for name, value in unrolled.items():
        assert looped[name].shape == value.shape, name
        if name.endswith("invconv/W"):
            np.testing.assert_array_equal(looped[name], value, err_msg=name)
    growth_unrolled = init_graph(small_glow(depth=6))[0] - n_unrolled
    growth_looped = init_graph(looped_glow(small_glow(depth=6)))[0] - n_looped
    assert growth_looped < 0.5 * growth_unrolled, (growth_looped, growth_unrolled)


@pytest.mark.parametrize("mode", ("none", "invertible"))
def test_looped_graph_does_not_grow_with_depth(mode):
    """The point of loop_steps: the training graph (loss and gradients) holds
    one step's ops per level and one stacked variable per variable of the
    step, whatever the depth. Unrolled, every step adds its ops."""
    def n_ops(depth, loop_steps):
        glow = glow_model.Glow(IMAGE, n_levels=2, depth=depth, width=8, coupling="affine",
                               loop_steps=loop_steps)
        with tf.Graph().as_default() as graph:
            x = tf.constant(_images(0))
            glow.init_op(x, None)
            n_init = len(graph.get_operations())
            loss = tf.reduce_mean(glow.losses(x, None, checkpointing=mode)["loss"])
            msg.gradients(loss, tf.trainable_variables(), mode=mode)
            return len(graph.get_operations()) - n_init, len(tf.global_variables())

    unrolled_growth = n_ops(6, False)[0] - n_ops(2, False)[0]
    assert unrolled_growth > 1000
    assert n_ops(6, True) == n_ops(2, True)


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
        loss = tf.reduce_mean(glow.losses(x, None, checkpointing=mode)["loss"])
        msg.gradients(loss, tf.trainable_variables(), mode=mode)
        glow.sample(tf.zeros([BATCH], tf.int32))
        ops = graph.get_operations()
    sparse = [op.name for op in ops if op.type.startswith(("ResourceGather", "ResourceScatter", "ResourceSparse"))]
    assert sparse == []
    stacked = [op.name for op in ops if op.type == "Pack" and op.inputs[0].op.type == "ReadVariableOp"]
    assert stacked == []
    in_loops = [op for op in ops if op.type == "GatherV2" and op.inputs[0].op.type == "Enter"]
    assert len(in_loops) > 10
