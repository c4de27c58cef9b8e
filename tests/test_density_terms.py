"""scripts/density_terms.py, the NumPy float64 re-computation of Glow's
log-density, against the TF graph's objective on a tiny model whose every
weight (zero-initialised convs and priors included) is random."""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import looped
import stacked
import model as glow_model
import optim
from flowcheck import randomize_variables

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import density_terms  # noqa: E402

IMAGE = (8, 8, 3)
N_Y = 3


def run_config(permutation, coupling, learntop=False, ycond=False, n_bits_x=8):
    return dict(image_shape=list(IMAGE), n_levels=2, depth=2, width=8, permutation=permutation, coupling=coupling,
                learntop=learntop, ycond=ycond, n_y=N_Y if ycond else 1, n_bits_x=n_bits_x, weight_y=0.0)


def build(cfg, loop_steps=False):
    """The run's Glow in float64, after data-dependent init and random weights,
    in a new graph: (glow, session, rng)."""
    run_steps = looped.looped_steps() if loop_steps else stacked.unrolled_steps
    glow = glow_model.Glow(dtype=tf.float64, run_steps=run_steps, **dict((k, cfg[k]) for k in glow_model.ARCHITECTURE))
    rng = np.random.RandomState(0)
    tf.set_random_seed(0)
    init = glow.init_op(tf.constant(rng.randint(0, 256, (16,) + IMAGE).astype(np.uint8)),
                        tf.constant(rng.randint(0, N_Y, 16).astype(np.int32)))
    return glow, init, rng


def tf_objectives(glow, custom_getters=(None,)):
    """(uint8 placeholder, noise placeholder, labels placeholder, [objective
    [B] with the weights of each custom getter])."""
    x_u8 = tf.placeholder(tf.uint8, (None,) + IMAGE)
    noise = tf.placeholder(tf.float64, (None,) + IMAGE)
    y = tf.placeholder(tf.int32, [None])
    x = glow.preprocess(x_u8) + noise
    return x_u8, noise, y, [glow.stats(x, y, custom_getter=g)[0]["objective"] for g in custom_getters]


def batch(rng, cfg, n=4):
    images = rng.randint(0, 256, (n,) + IMAGE).astype(np.uint8)
    return images, rng.uniform(0, 2.0 ** -cfg["n_bits_x"], images.shape), rng.randint(0, N_Y, n).astype(np.int32)


CASES = [
    run_config("invconv", "affine", learntop=True),
    run_config("invconv_lu", "affine", learntop=True, ycond=True),
    run_config("invconv", "additive"),
    run_config("invconv_lu", "additive", ycond=True, n_bits_x=5),
    run_config("shuffle", "affine"),
    run_config("reverse", "additive", learntop=True),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "%(permutation)s-%(coupling)s-top%(learntop)d-y%(ycond)d" % c)
def test_numpy_objective_equals_the_graph(cfg):
    with tf.Graph().as_default():
        glow, init, rng = build(cfg)
        x_u8, noise, y, objectives = tf_objectives(glow)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(init)
            randomize_variables(sess, rng, scale=0.1)
            images, noise_v, labels = batch(rng, cfg)
            expected = sess.run(objectives, {x_u8: images, noise: noise_v, y: labels})[0]
            variables = tf.global_variables()
            params = dict(zip([v.op.name for v in variables], sess.run(variables)))  # one run, not one each
    assert np.all(np.isfinite(expected)) and np.std(expected) > 0.1
    out = density_terms.density_terms(params, cfg, images, labels, noise_v)
    np.testing.assert_allclose(out["objective"], expected, rtol=1e-8)
    np.testing.assert_allclose(sum(out["terms"].values()), out["objective"], rtol=1e-12)
    np.testing.assert_allclose(out["bits_x"], -expected / (np.log(2.0) * np.prod(IMAGE)), rtol=1e-8)
    # Random weights reach every term: the split and top priors are not N(0, 1) of z.
    assert np.all(np.abs(out["extras"]["L0 split min logs"]) > 1e-3)
    if cfg["coupling"] == "affine":
        assert np.all(out["terms"]["L1 coupling logdet"] < 0)


def test_checkpoint_of_looped_steps_with_polyak_weights(tmp_path):
    """A --loop_steps checkpoint (stacked step variables, as every run's) written by
    tf.train.Saver, read back by load_checkpoint: raw and Polyak weights each
    give the graph's objective (the Polyak one through the eval getter)."""
    cfg = run_config("invconv_lu", "affine", learntop=True, ycond=True)
    with tf.Graph().as_default():
        glow, init, rng = build(cfg, loop_steps=True)
        ema = optim.Polyak(tf.trainable_variables(), 0.9)  # its slots' names are the checkpoint keys
        with tf.variable_scope("run"):  # the run config every checkpoint carries (checkpoints.CONFIG_KEY)
            tf.get_variable("config", initializer=tf.constant(json.dumps(dict(cfg, problem="mnist"))), trainable=False)
        x_u8, noise, y, objectives = tf_objectives(glow, (None, ema.getter(True)))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(init)
            randomize_variables(sess, rng, scale=0.1)
            # Each average moved off its weight (fed to the initializers: one
            # run, not one per variable).
            sess.run([a.initializer for a in ema.variables], dict(
                (a.initializer.inputs[1], value + 0.05 * rng.randn(*value.shape))
                for a, value in zip(ema.variables, sess.run(ema.params))))
            images, noise_v, labels = batch(rng, cfg)
            expected = sess.run(objectives, {x_u8: images, noise: noise_v, y: labels})
            os.makedirs(str(tmp_path / "checkpoints"))
            prefix = tf.train.Saver().save(sess, str(tmp_path / "checkpoints" / "model.ckpt"))
    run = density_terms.load_run(prefix)
    params = density_terms.load_checkpoint(prefix)
    assert "model/0/step/actnorm/b" in params and "optim/model/0/step/actnorm/b/ema" in params
    assert not any("/m1" in k or k.startswith("model/0/0/") for k in params)
    for weights, want in zip(("raw", "polyak"), expected):
        out = density_terms.density_terms(params, run, images, labels, noise_v, weights=weights)
        np.testing.assert_allclose(out["objective"], want, rtol=1e-8)
    assert np.min(np.abs(expected[0] - expected[1])) > 1e-3, "the Polyak weights must differ from the raw ones"
