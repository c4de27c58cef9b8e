"""optim.py against a NumPy transcription of openai/glow's update equations."""
import math
import os
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import optim  # noqa: E402

tf.disable_v2_behavior()

# A two-parameter quadratic: loss = sum_i 0.5 * sum(a_i * (w_i - c_i)^2).
A = [np.array([1.0, 2.0, 0.5]), np.array([[0.3, 1.0], [4.0, 0.7]])]
C = [np.array([0.3, -0.7, 1.5]), np.array([[-1.0, 0.2], [0.5, 2.0]])]
W0 = [np.array([1.0, 0.5, -0.5]), np.array([[0.0, -0.3], [1.2, 0.4]])]
EPS = 1e-8


def np_step(state, grads, name, lr, beta1, beta2, wd, decay):
    """One step of glow's Adam/Adamax, written from the equations, in float64."""
    t = state["t"]
    alpha = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    for i, g in enumerate(grads):
        state["m1"][i] = beta1 * state["m1"][i] + (1.0 - beta1) * g  # beta1 = 0: g
        m1 = state["m1"][i]
        if name == "adam":
            state["m2"][i] = beta2 * state["m2"][i] + (1.0 - beta2) * g ** 2
            delta = m1 / (np.sqrt(state["m2"][i]) + EPS)
        else:
            state["m2"][i] = np.maximum(beta2 * state["m2"][i], np.abs(g))
            delta = m1 / (state["m2"][i] + EPS)
        state["w"][i] = wd * state["w"][i] - alpha * delta
        state["ema"][i] = decay * state["ema"][i] + (1.0 - decay) * state["w"][i]
    state["t"] = t + 1


def np_state(w0):
    w0 = [np.array(w, dtype=np.float64) for w in w0]
    return {"t": 1, "w": [w.copy() for w in w0], "ema": [w.copy() for w in w0],
            "m1": [np.zeros_like(w) for w in w0], "m2": [np.zeros_like(w) for w in w0]}


def quadratic(dtype, scope="model"):
    """Params (resource variables) and loss of the quadratic."""
    with tf.variable_scope(scope):
        params = [tf.get_variable("w%d" % i, initializer=tf.constant(w0, dtype), use_resource=True)
                  for i, w0 in enumerate(W0)]
    loss = tf.add_n([0.5 * tf.reduce_sum(tf.constant(a, dtype) * tf.square(w - tf.constant(c, dtype)))
                     for w, a, c in zip(params, A, C)])
    return params, loss


def state(name=None):
    """The optimizer state variable named `name` (a checkpoint key), or all of them."""
    found = [v for v in tf.global_variables() if v.op.name.startswith("optim/")]
    if name is None:
        return found
    matches = [v for v in found if v.op.name == name]
    assert len(matches) == 1, (name, [v.op.name for v in found])
    return matches[0]


def average(param):
    return state("optim/%s/ema" % param.op.name)


CASES = [
    # name, beta1, beta2, weight_decay, polyak_decay
    ("adam", 0.9, 0.99, 1.0, None),
    ("adam", 0.0, 0.99, 0.995, None),
    ("adam", 0.9, 1.0 - 1e-6, 1.0, 0.5),  # beta2 this close to 1 defeats a float32 pow()
    ("adamax", 0.9, 0.99, 0.99, None),
    ("adamax", 0.0, 0.999, 1.0, 0.5),
]


@pytest.mark.parametrize("name,beta1,beta2,wd,decay", CASES)
def test_steps_match_numpy(name, beta1, beta2, wd, decay):
    lrs = [0.1, 0.05, 0.2, 0.1, 0.15, 0.1]  # fed through a placeholder, like warm-up
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float64)
        lr = tf.placeholder(tf.float32, [])
        res = optim.make_train_op(name, params, tf.gradients(loss, params), lr, beta1, beta2,
                                  weight_decay=wd, polyak_decay=decay)
        decay = beta2 if decay is None else decay
        m1 = [state("optim/model/w%d/m1" % i) for i in range(2)]
        m2 = [state("optim/model/w%d/m2" % i) for i in range(2)]
        ema = [average(p) for p in params]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(res.ema.seed_op)
            ref = np_state(W0)
            for lr_value in lrs:
                g = [a * (w - c) for w, a, c in zip(ref["w"], A, C)]
                # the graph sees lr as float32
                np_step(ref, g, name, float(np.float32(lr_value)), beta1, beta2, wd, decay)
                sess.run(res.train_op, {lr: lr_value})
                got_w, got_m1, got_m2, got_ema, t = sess.run([params, m1, m2, ema, state("optim/t")])
                assert t == ref["t"]
                for i in range(2):
                    np.testing.assert_allclose(got_w[i], ref["w"][i], rtol=1e-6, atol=1e-9)
                    np.testing.assert_allclose(got_m2[i], ref["m2"][i], rtol=1e-6, atol=1e-12)
                    np.testing.assert_allclose(got_ema[i], ref["ema"][i], rtol=1e-6, atol=1e-9)
                    np.testing.assert_allclose(got_m1[i], ref["m1"][i], rtol=1e-6, atol=1e-12)
            assert sess.run(res.n_skipped) == 0
            # the weights did move: the comparison above is not of unchanged values
            assert not np.allclose(got_w[0], W0[0], atol=1e-3)


@pytest.mark.parametrize("clip", [{"max_grad_value": 0.3}, {"max_grad_norm": 0.5},
                                  {"max_grad_value": 0.3, "max_grad_norm": 0.4}])
def test_clipping_steps_with_the_clipped_gradient(clip):
    """Clipping by value (each entry to [-v, v]), then by global norm (all gradients scaled together to norm <= n):
    three Adam steps equal NumPy's on the gradients clipped so; the gradients here are large enough to be clipped."""
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float64)
        res = optim.make_train_op("adam", params, tf.gradients(loss, params), 0.1, 0.9, 0.99, **clip)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(res.ema.seed_op)
            ref, clipped = np_state(W0), 0
            for _ in range(3):
                g = [a * (w - c) for w, a, c in zip(ref["w"], A, C)]
                if clip.get("max_grad_value"):
                    v = clip["max_grad_value"]
                    clipped += any(np.any(np.abs(x) > v) for x in g)
                    g = [np.clip(x, -v, v) for x in g]
                norm = np.sqrt(sum(np.sum(np.square(x)) for x in g))
                if clip.get("max_grad_norm") and norm > clip["max_grad_norm"]:
                    clipped += 1
                    g = [x * clip["max_grad_norm"] / norm for x in g]
                np_step(ref, g, "adam", float(np.float32(0.1)), 0.9, 0.99, 1.0, 0.99)  # the graph sees lr as float32
                sess.run(res.train_op)
            got = sess.run(params)
    assert clipped >= 3
    # The graph's step size alpha_t is a float32 (relative rounding up to 2^-24, times 2 for its three operations)
    # in steps of at most lr: an entry that three steps of 0.1 take to about 0 is off by up to 3 * 0.1 * 2^-23
    # absolute (seen: 7.8e-9).
    for i in range(2):
        np.testing.assert_allclose(got[i], ref["w"][i], rtol=1e-6, atol=3 * 0.1 * 2.0 ** -23)


def test_beta1_zero_keeps_the_gradient_as_first_moment():
    """beta1 = 0: m1 is the last gradient (the fused kernels keep the slot)."""
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float32)
        grads = tf.gradients(loss, params)
        res = optim.make_train_op("adam", params, grads, 0.1, 0.0, 0.99)
        m1 = [v for v in state() if v.op.name.endswith("/m1")]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            g = sess.run(grads)
            sess.run(res.train_op)
            got = sess.run(m1)
    assert len(m1) == 2
    for i in range(2):
        np.testing.assert_allclose(got[i], g[i], rtol=1e-6)


def test_state_names_are_fixed_checkpoint_keys():
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float32)
        res = optim.make_train_op("adamax", params, tf.gradients(loss, params), 0.1, 0.9, 0.99)
        names = sorted(v.op.name for v in state())
        assert names == sorted(["optim/t", "optim/n_skipped"] +
                               ["optim/model/w%d/%s" % (i, s) for i in range(2)
                                for s in ("m1", "m2", "ema")])
        assert not set(state()) & set(tf.trainable_variables())
        assert state("optim/t").dtype.base_dtype == tf.float32
        assert res.n_skipped.dtype.base_dtype == tf.int64
        # a second optimizer in the same scope would silently alias keys: refused
        with pytest.raises(ValueError):
            optim.make_train_op("adamax", params, tf.gradients(loss, params), 0.1, 0.9, 0.99)


@pytest.mark.parametrize("name", ["adam", "adamax"])
def test_loss_decreases(name):
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float32)
        res = optim.make_train_op(name, params, tf.gradients(loss, params), 0.05, 0.9, 1 - 1.0 / 100)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            first = sess.run(loss)
            for _ in range(200):
                sess.run(res.train_op)
            last = sess.run(loss)
    assert last < 0.05 * first, (first, last)


def _all_state(sess, params):
    return [np.array(v) for v in sess.run(list(params) + state())]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_changes_nothing_then_training_resumes(bad):
    g_values = [np.array([0.5, -1.0, 2.0]), np.array([0.1, bad, 0.3]), np.array([-0.4, 0.2, 1.0])]
    with tf.Graph().as_default():
        w = tf.get_variable("w", initializer=tf.constant(W0[0]), use_resource=True)
        g = tf.placeholder(tf.float64, [3])
        res = optim.make_train_op("adam", [w], [g], 0.1, 0.9, 0.99)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(res.ema.seed_op)
            ref = np_state([W0[0]])
            sess.run(res.train_op, {g: g_values[0]})
            np_step(ref, [g_values[0]], "adam", float(np.float32(0.1)), 0.9, 0.99, 1.0, 0.99)

            before = _all_state(sess, [w])
            assert not sess.run(res.grads_finite, {g: g_values[1]})
            sess.run(res.train_op, {g: g_values[1]})
            after = _all_state(sess, [w])
            n_skipped_index = 1 + state().index(state("optim/n_skipped"))
            for i, (b, a) in enumerate(zip(before, after)):
                if i == n_skipped_index:
                    assert a == b + 1
                else:
                    np.testing.assert_array_equal(a, b)
                    assert np.all(np.isfinite(a))

            sess.run(res.train_op, {g: g_values[2]})
            np_step(ref, [g_values[2]], "adam", float(np.float32(0.1)), 0.9, 0.99, 1.0, 0.99)
            got_w, got_ema, t, n = sess.run([w, average(w), state("optim/t"), res.n_skipped])
    np.testing.assert_allclose(got_w, ref["w"][0], rtol=1e-6)
    np.testing.assert_allclose(got_ema, ref["ema"][0], rtol=1e-6)
    assert t == 3 and n == 1


def test_nonfinite_loss_skips_even_with_finite_gradients():
    with tf.Graph().as_default():
        params, quad = quadratic(tf.float32)
        s = tf.placeholder(tf.float32, [])
        loss = quad + tf.log(s)  # log(-1) = NaN; the gradient wrt params stays finite
        res = optim.make_train_op("adamax", params, tf.gradients(loss, params), 0.1, 0.9, 0.99,
                                  loss=loss)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            w_before = sess.run(params)
            sess.run(res.train_op, {s: -1.0})
            assert sess.run(res.n_skipped) == 1
            for a, b in zip(sess.run(params), w_before):
                np.testing.assert_array_equal(a, b)
            sess.run(res.train_op, {s: 1.0})
            assert sess.run(res.n_skipped) == 1 and sess.run(state("optim/t")) == 2
            assert not np.allclose(sess.run(params)[0], w_before[0])


def test_ema_starts_from_seed_then_follows_numpy():
    decay = 0.8
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float64)
        res = optim.make_train_op("adam", params, tf.gradients(loss, params), 0.1, 0.9, 0.99,
                                  polyak_decay=decay)
        ddi = [p.assign(p.read_value() * 3.0 + 1.0) for p in params]  # stands in for data-dependent init
        averages = [average(p) for p in params]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            # before seeding the average holds the initial values, not zeros
            for a, w0 in zip(sess.run(averages), W0):
                np.testing.assert_array_equal(a, w0)
            sess.run(ddi)
            sess.run(res.ema.seed_op)
            seeded = sess.run(params)
            for a, w in zip(sess.run(averages), seeded):
                np.testing.assert_array_equal(a, w)
            ref = np_state(seeded)
            for _ in range(4):
                g = [a * (w - c) for w, a, c in zip(ref["w"], A, C)]
                np_step(ref, g, "adam", float(np.float32(0.1)), 0.9, 0.99, 1.0, decay)
                sess.run(res.train_op)
            got = sess.run(averages)
            got_w = sess.run(params)
    for i in range(2):
        np.testing.assert_allclose(got[i], ref["ema"][i], rtol=1e-6)
        assert not np.allclose(got[i], got_w[i])  # the average lags the weights


def test_polyak_standalone_update_and_seed():
    with tf.Graph().as_default():
        w = tf.get_variable("w", initializer=tf.constant([1.0, -2.0]), use_resource=True)
        ema = optim.Polyak([w], 0.75, scope="avg")
        avg, = ema.variables
        assert avg.op.name == "avg/w/ema" and ema.params == [w]
        apply = tf.placeholder(tf.bool, [])
        update = ema.update([w.read_value()], apply)
        set_w = w.assign([5.0, 6.0])
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(set_w)
            sess.run(update, {apply: False})
            np.testing.assert_array_equal(sess.run(avg), [1.0, -2.0])
            sess.run(update, {apply: True})
            np.testing.assert_allclose(sess.run(avg), 0.75 * np.array([1.0, -2.0]) + 0.25 * np.array([5.0, 6.0]))
            sess.run(ema.seed_op)
            np.testing.assert_array_equal(sess.run(avg), [5.0, 6.0])
        with pytest.raises(ValueError, match="2 values for 1 params"):
            ema.update([w, w], apply)


def test_getter_reads_averages_or_weights_as_fed():
    def model():
        w = tf.get_variable("w", initializer=tf.constant([1.0, 2.0, 3.0]), use_resource=True)
        count = tf.get_variable("count", initializer=tf.constant(7.0), trainable=False,
                                use_resource=True)
        return 2.0 * w + count

    with tf.Graph().as_default():
        with tf.variable_scope("model"):
            y = model()
        loss = tf.reduce_sum(tf.square(y))
        params = tf.trainable_variables()
        res = optim.make_train_op("adam", params, tf.gradients(loss, params), 0.1, 0.9, 0.9)
        use_average = tf.placeholder(tf.bool, [])
        with tf.variable_scope("model", reuse=True, custom_getter=res.ema.getter(use_average)):
            y_either = model()
        with tf.variable_scope("model", reuse=True, custom_getter=res.ema.getter(True)):
            y_ema = model()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(res.ema.seed_op)
            for _ in range(3):
                sess.run(res.train_op)
            avg, w, got, got_train = sess.run([average(params[0]), params[0], y_ema, y])
            got_avg = sess.run(y_either, {use_average: True})
            got_raw = sess.run(y_either, {use_average: False})
    np.testing.assert_allclose(got, 2.0 * avg + 7.0, rtol=1e-6)
    np.testing.assert_allclose(got_train, 2.0 * w + 7.0, rtol=1e-6)
    np.testing.assert_array_equal(got_avg, got)
    np.testing.assert_array_equal(got_raw, got_train)
    assert not np.allclose(got, got_train)


def test_bad_optimizer_name_is_named():
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float32)
        with pytest.raises(ValueError, match="'sgd'"):
            optim.make_train_op("sgd", params, tf.gradients(loss, params), 0.1, 0.9, 0.99)


def test_none_gradient_names_the_variable():
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float32)
        with tf.variable_scope("model"):
            unused = tf.get_variable("unused", [2], use_resource=True)
        grads = tf.gradients(loss, params + [unused])
        assert grads[-1] is None
        with pytest.raises(ValueError, match="model/unused"):
            optim.make_train_op("adam", params + [unused], grads, 0.1, 0.9, 0.99)


@pytest.mark.parametrize("kwargs,needle", [
    ({"beta1": 1.0}, "beta1=1.0"),
    ({"beta1": -0.1}, "beta1=-0.1"),
    ({"beta2": 1.0}, "beta2=1.0"),
    ({"beta2": 0.0}, "beta2=0.0"),
    ({"weight_decay": 0.0}, "weight_decay=0.0"),
    ({"weight_decay": 1.5}, "weight_decay=1.5"),
    ({"lr": -1e-3}, "lr=-0.001"),
    ({"polyak_decay": 1.0}, "decay=1.0"),
    ({"max_grad_norm": -1.0}, "max_grad_norm=-1.0"),
    ({"max_grad_value": -0.5}, "max_grad_value=-0.5"),
])
def test_bad_numbers_are_named(kwargs, needle):
    args = {"lr": 0.1, "beta1": 0.9, "beta2": 0.99}
    args.update(kwargs)
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float32)
        with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
            optim.make_train_op("adam", params, tf.gradients(loss, params), **args)


def test_ref_variables_are_refused():
    with tf.Graph().as_default():
        w = tf.get_variable("w", [2], use_resource=False)
        with pytest.raises(ValueError, match="w:0.*use_resource=True"):
            optim.make_train_op("adam", [w], [tf.ones([2])], 0.1, 0.9, 0.99)


def test_gradient_count_must_match():
    with tf.Graph().as_default():
        params, loss = quadratic(tf.float32)
        with pytest.raises(ValueError, match="1 gradients for 2 params"):
            optim.make_train_op("adam", params, tf.gradients(loss, params[:1]), 0.1, 0.9, 0.99)
