#!/usr/bin/env python
"""Glow's log-density of images, recomputed term by term in NumPy float64
from a checkpoint's weights.

    python scripts/density_terms.py LOGDIR --images 1754 17 [--weights raw|polyak]
        [--checkpoint PREFIX] [--problem P --data_dir DIR] [--noise centre|eval] [--json PATH]

An implementation independent of the TF graph (tests/test_density_terms.py
checks that the two agree): the paper's math (Kingma & Dhariwal 2018) with
openai/glow's conventions as tfops.py implements them, written again here:
none of its math comes from tfops or model (it imports checkpoints for the
run config, model for the list of what defines the architecture
(model.ARCHITECTURE) and, with --noise eval, evaluator for that noise alone).
TensorFlow only reads the checkpoint. It
tells whether an image's tiny density is the model's or a float32 defect of
the graph, and which level's terms run away. Images sit at their bin centres,
or with `--noise eval` take the dequantisation noise of train.py's evaluation.
"""
import argparse
import json
import os
import sys

import numpy as np
import tensorflow.compat.v1 as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGSCALE = 3.0  # actnorm and zero-conv log-scales are stored divided by 3 (openai/glow)


def load_run(prefix):
    """The run config the checkpoint at `prefix` was written with (checkpoints.saved_config)."""
    sys.path.insert(0, ROOT)
    import checkpoints
    import model
    cfg = checkpoints.saved_config(prefix)
    if cfg is None:
        raise ValueError("%s: carries no run config (written by an older version): %s" % (prefix, checkpoints.UPGRADE))
    missing = [k for k in model.ARCHITECTURE if k not in cfg]
    if missing:
        raise ValueError("%s: the run config lacks %s" % (prefix, ", ".join(missing)))
    return cfg


def load_checkpoint(prefix):
    """{checkpoint key: array}: the model's variables (`model/...`) and their
    Polyak averages (`optim/model/.../ema`) of the checkpoint at `prefix`."""
    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k in reader.get_variable_to_shape_map()
            if k.startswith("model/") or (k.startswith("optim/model/") and k.endswith("/ema"))]
    return dict((k, reader.get_tensor(k)) for k in keys)


def weight_getter(params, weights="raw"):
    """get(name) -> the value of model variable `name` from `params`; a flow
    step's, model/<level>/<step>/..., is row <step> of the level's stacked
    model/<level>/step/... (stacked.py). weights='polyak' reads the Polyak
    average optim/<name>/ema (optim.Polyak) where there is one: trainable
    variables; P, sign_S and shuffle indices have none."""
    if weights not in ("raw", "polyak"):
        raise ValueError("weights %r: expected raw or polyak" % (weights,))
    if weights == "polyak" and not any(k.startswith("optim/") for k in params):
        raise ValueError("weights polyak: no Polyak averages (optim/model/.../ema) in these params")

    def get(name):
        parts = name.split("/")
        key, row = name, None
        if len(parts) > 3 and parts[1].isdigit() and parts[2].isdigit():  # a flow step's
            key, row = "/".join(parts[:2] + ["step"] + parts[3:]), int(parts[2])
        for k in (["optim/%s/ema" % key] if weights == "polyak" else []) + [key]:
            if k in params:
                value = np.asarray(params[k] if row is None else params[k][row])
                return value if value.dtype.kind in "iub" else value.astype(np.float64)
        raise KeyError("variable %s: not in the params (as %s)" % (name, key))
    return get


def preprocess(x_uint8, n_bits_x=8, noise=None):
    """uint8 [B,H,W,C] -> x in [-0.5, 0.5) (Glow.preprocess), plus `noise` (in
    [0, 1/n_bins), Glow.dequantize's) or, with None, half a bin: the centre."""
    n_bins = 2.0 ** n_bits_x
    x = np.asarray(x_uint8, np.float64)
    if n_bits_x < 8:
        x = np.floor(x / 2 ** (8 - n_bits_x))
    return x / n_bins - 0.5 + (0.5 / n_bins if noise is None else np.asarray(noise, np.float64))


def squeeze2d(x):
    """Space-to-depth in openai/glow's order: out channel c*4 + dy*2 + dx."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)  # [B, H/2, W/2, C, 2, 2]
    return x.reshape(b, h // 2, w // 2, 4 * c)  # [B, H/2, W/2, 4C]


def conv(x, w):
    """Stride-1 'SAME' conv of x [B,H,W,C] with w [kh,kw,C',N], with openai/glow's
    edge padding when kh*kw > 1: zeros plus an input channel (C' = C + 1) that
    is 1 on the padding. Summed over the kh*kw shifted windows."""
    kh, kw = w.shape[:2]
    n, h, wd = x.shape[:3]
    if kh * kw > 1:
        pads = [(0, 0), ((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2, (0, 0)]
        x = np.concatenate([np.pad(x, pads), np.pad(np.zeros((n, h, wd, 1)), pads, constant_values=1.0)], 3)
    assert x.shape[3] == w.shape[2], "conv: %d input channels for a filter of %s" % (x.shape[3], w.shape)
    return sum(x[:, dy:dy + h, dx:dx + wd] @ w[dy, dx] for dy in range(kh) for dx in range(kw))


def conv_zeros(get, scope, x):
    """tfops.conv2d_zeros: (conv(x, W) + b) * exp(3 logs)."""
    return (conv(x, get(scope + "/W")) + get(scope + "/b")) * np.exp(LOGSCALE * get(scope + "/logs"))


def coupling_nn(get, scope, z1):
    """tfops.coupling_nn: conv3x3 -> actnorm -> ReLU -> conv1x1 -> actnorm -> ReLU -> zero conv3x3."""
    h = z1
    for layer in ("l_1", "l_2"):
        s = "%s/%s/" % (scope, layer)
        h = conv(h, get(s + "W"))
        h = np.maximum((h + get(s + "actnorm/b")) * np.exp(LOGSCALE * get(s + "actnorm/logs")), 0.0)
    return conv_zeros(get, scope + "/l_last", h)


def permute(kind, get, scope, z):
    """The permutation `kind` of z: (z, log|det| per pixel)."""
    if kind == "reverse":
        return z[..., ::-1], 0.0
    if kind == "shuffle":
        return z[..., get(scope + "/indices")], 0.0
    if kind == "invconv":
        w = get(scope + "/W")
        return z @ w, np.linalg.slogdet(w)[1]
    if kind == "invconv_lu":  # W = P L (U + diag(sign_S exp(log_S))), paper eq. 10
        n_c = z.shape[3]
        log_s = get(scope + "/log_S")
        lower = np.tril(get(scope + "/L"), -1) + np.eye(n_c)
        upper = np.triu(get(scope + "/U"), 1) + np.diag(get(scope + "/sign_S") * np.exp(log_s))
        return z @ (get(scope + "/P") @ lower @ upper), np.sum(log_s)
    raise ValueError("permutation %r: expected reverse, shuffle, invconv or invconv_lu" % (kind,))


def gaussian(z, mean, logs):
    """log N(z; mean, exp(logs)^2) summed per image, max |eps| and min logs per image."""
    eps = (z - mean) * np.exp(-logs)
    axes = (1, 2, 3)
    logp = np.sum(-0.5 * (np.log(2 * np.pi) + 2.0 * logs + eps ** 2), axis=axes)
    return logp, np.max(np.abs(eps), axis=axes), np.min(np.broadcast_to(logs, z.shape), axis=axes)


def top_prior(get, cfg, shape, y):
    """The top prior's h [B, h, w, 2c] (model.top_prior): its mean and logs are the halves of h's channels."""
    h = np.zeros(shape)
    if cfg["learntop"]:
        h = conv_zeros(get, "model/prior/p", h)
    if cfg["ycond"]:
        if y is None:
            raise ValueError("this run has ycond: density_terms needs the labels y")
        onehot = np.eye(cfg["n_y"])[np.asarray(y)]  # [B, n_y]
        emb = (onehot @ get("model/prior/y_emb/W") + get("model/prior/y_emb/b")) * np.exp(
            LOGSCALE * get("model/prior/y_emb/logs"))
        h = h + emb[:, None, None, :]
    return h


def density_terms(params, cfg, x_uint8, y=None, noise=None, weights="raw"):
    """Glow's log p(x) of uint8 images x [B,H,W,C] (labels y [B] for ycond)
    from `params` ({checkpoint key: array}) and a run config `cfg`
    (load_run). Returns {"objective": [B] nats, "bits_x": [B], "terms":
    {name: [B] nats} summing to objective, "extras": {name: [B]}
    diagnostics: largest |z| after each level, per prior the largest
    standardised |z - mean| / exp(logs) and the smallest logs, the
    smallest affine log-scale}."""
    get = weight_getter(params, weights)
    x_uint8 = np.asarray(x_uint8)
    if x_uint8.ndim != 4 or tuple(x_uint8.shape[1:]) != tuple(cfg["image_shape"]):
        raise ValueError("images of shape %s: the run's are [B] + %s" % (x_uint8.shape, cfg["image_shape"]))
    n = x_uint8.shape[0]
    terms, extras = {}, {}
    z = squeeze2d(preprocess(x_uint8, cfg["n_bits_x"], noise))  # [B, H/2, W/2, 4C]
    for level in range(cfg["n_levels"]):
        hw = z.shape[1] * z.shape[2]
        sums = dict((k, np.zeros(n)) for k in ("actnorm", "permutation", "coupling"))
        min_log_scale = np.full(n, np.inf)
        for i in range(cfg["depth"]):  # a step (paper Figure 2a): actnorm, permutation, coupling
            s = "model/%d/%d/" % (level, i)
            logs = LOGSCALE * get(s + "actnorm/logs")
            z = (z + get(s + "actnorm/b")) * np.exp(logs)
            sums["actnorm"] += hw * np.sum(logs)
            z, dlogdet = permute(cfg["permutation"], get, s + cfg["permutation"], z)
            sums["permutation"] += hw * dlogdet
            z1, z2 = np.split(z, 2, axis=3)
            h = coupling_nn(get, s + "f1", z1)
            if cfg["coupling"] == "affine":
                # scale = sigmoid(raw + 2); log sigmoid(a) = -log(1 + e^-a), finite where sigmoid underflows
                log_scale = -np.logaddexp(0.0, -(h[..., 1::2] + 2.0))
                z2 = (z2 + h[..., 0::2]) * np.exp(log_scale)
                sums["coupling"] += np.sum(log_scale, axis=(1, 2, 3))
                min_log_scale = np.minimum(min_log_scale, np.min(log_scale, axis=(1, 2, 3)))
            else:
                z2 = z2 + h
            z = np.concatenate([z1, z2], axis=3)
        for k, v in sums.items():
            terms["L%d %s logdet" % (level, k)] = v
        extras["L%d max|z|" % level] = np.max(np.abs(z), axis=(1, 2, 3))
        if cfg["coupling"] == "affine":
            extras["L%d min coupling log-scale" % level] = min_log_scale
        if level < cfg["n_levels"] - 1:  # split (paper 3.4): z2 ~ N(mean, exp(logs)) given z1
            z1, z2 = np.split(z, 2, axis=3)
            h = conv_zeros(get, "model/pool%d/conv" % level, z1)
            logp, extras["L%d split max|eps|" % level], extras["L%d split min logs" % level] = gaussian(
                z2, h[..., 0::2], h[..., 1::2])
            terms["L%d split log p" % level] = logp
            z = squeeze2d(z1)  # [B, h/2, w/2, 2c]
    n_z = z.shape[3]
    h = top_prior(get, cfg, z.shape[:3] + (2 * n_z,), y)
    terms["top log p"], extras["top max|eps|"], extras["top min logs"] = gaussian(z, h[..., :n_z], h[..., n_z:])
    n_dims = int(np.prod(cfg["image_shape"]))
    terms["discretisation -D ln(n_bins)"] = np.full(n, -n_dims * cfg["n_bits_x"] * np.log(2.0))
    objective = sum(terms.values())
    return {"objective": objective, "bits_x": -objective / (np.log(2.0) * n_dims), "terms": terms, "extras": extras}


def load_test_images(cfg, indices, problem=None, data_dir=None):
    """Test images (uint8 [B,H,W,C]) and labels [B] by index, as the run read them (no augmentation)."""
    sys.path.insert(0, ROOT)
    import data_loaders
    data_dir = data_dir or cfg.get("data_dir") or None
    if data_dir and cfg.get("category"):
        data_dir = os.path.join(data_dir, cfg["category"])
    data = data_loaders.get_data(problem or cfg["problem"], data_dir=data_dir, image_size=cfg["image_shape"][0],
                                 dal=0, n_channels=cfg.get("n_channels"))
    if tuple(data.image_shape) != tuple(cfg["image_shape"]) or max(indices) >= data.n_test or min(indices) < 0:
        raise ValueError("--images %s of %s %s: the test set has %d images of shape %s" % (
            indices, data.problem, data.image_shape, data.n_test, cfg["image_shape"]))
    xs, ys, batches = [], [], data.test_batches(500)
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        if sum(len(b) for b in xs) > max(indices):
            batches.close()  # stops the loader's thread
            break
    return np.concatenate(xs)[indices], np.concatenate(ys)[indices]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logdir")
    p.add_argument("--images", type=int, nargs="+", required=True, help="test set indices")
    p.add_argument("--weights", choices=("raw", "polyak"), default="raw")
    p.add_argument("--checkpoint", help="checkpoint prefix (default: the latest in LOGDIR/checkpoints)")
    p.add_argument("--problem", help="default: the run's")
    p.add_argument("--data_dir", help="default: the run's")
    p.add_argument("--noise", choices=("centre", "eval"), default="centre",
                   help="images at their bin centres, or with the noise of train.py's evaluation (draw 0 of "
                        "each test image's own stream, evaluator.dequantization_noise)")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    prefix = args.checkpoint or tf.train.latest_checkpoint(os.path.join(args.logdir, "checkpoints"))
    if not prefix:
        raise ValueError("%s/checkpoints: no checkpoint; give --checkpoint PREFIX" % args.logdir)
    cfg = load_run(prefix)
    x, y = load_test_images(cfg, args.images, args.problem, args.data_dir)
    noise = None
    if args.noise == "eval":  # draw 0 of the evaluation's noise; only the model's math is written again here
        import evaluator  # on sys.path since load_test_images
        noise = evaluator.dequantization_noise(args.images, 0, x.shape[1:], 2.0 ** cfg["n_bits_x"])
    out = density_terms(load_checkpoint(prefix), cfg, x, y, noise, args.weights)
    rows = [("bits_x", out["bits_x"]), ("objective (nats)", out["objective"])]
    rows += [("  " + k, v) for k, v in out["terms"].items()] + [("extra: " + k, v) for k, v in out["extras"].items()]
    print("%s, %s weights, %s" % (prefix, args.weights, "bin centres" if noise is None else "evaluation noise"))
    print("%-34s" % "term (nats)" + "".join("%16s" % ("image %d" % i) for i in args.images))
    for name, values in rows:
        print("%-34s" % name + "".join("%16.6g" % v for v in values))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": prefix, "weights": args.weights, "noise": args.noise,
                       "images": args.images, "labels": [int(v) for v in y],
                       "rows": dict((name.strip(), [float(v) for v in values]) for name, values in rows)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
