"""Checks shared by the flow tests: the exact Jacobian of a per-example map,
built with one tf.gradients call, and random values for every variable."""
import numpy as np
import tensorflow.compat.v1 as tf


def randomize_variables(sess, rng, scale=0.1):
    """Add small random values to every trainable variable, so that
    zero-initialised layers (the last conv of each coupling, the priors) are
    not the identity and the tests see a non-trivial map. Non-trainable
    structure (the LU's permutation and signs, shuffle indices) is kept.
    One run reads all the variables and one writes them (each variable's
    initializer, fed the new value, as Variable.load does one at a time),
    and the graph gets no new ops."""
    params = tf.trainable_variables()
    feed = {}
    for v, value in zip(params, sess.run(params)):
        value = value + scale * rng.randn(*value.shape)
        feed[v.initializer.inputs[1]] = value.astype(v.dtype.base_dtype.as_numpy_dtype)
    assert len(feed) == len(params), "two variables share an initial value: one feed cannot set both"
    sess.run([v.initializer for v in params], feed)


def jacobian_rows(x_batch, y_batch):
    """Jacobian of a per-example map from D copies of one input.

    x_batch: [D, ...] (D copies of one x), y_batch: [D, ...] with D outputs per
    example. Example b's output b depends only on x_batch[b], so the gradient
    of sum_b y[b, b] with respect to x_batch[b] is row b of the Jacobian."""
    n = int(x_batch.get_shape()[0])
    y_flat = tf.reshape(y_batch, [n, -1])
    if int(y_flat.get_shape()[1]) != n:
        raise ValueError("jacobian_rows: output has %s dims per example, input %d"
                         % (y_flat.get_shape()[1], n))
    diag = tf.reduce_sum(tf.matrix_diag_part(y_flat))
    return tf.reshape(tf.gradients(diag, x_batch)[0], [n, n])  # [D_out, D_in]


def slogdet(matrix):
    sign, logabsdet = np.linalg.slogdet(matrix)
    assert sign != 0, "Jacobian is singular"
    return logabsdet
