"""What the tools on a trained run share (scripts/likelihood.py, latent.py, ood.py): a run folder opened with
its own config and weights (no model flag; a CPU is enough for a model trained elsewhere), and images in the
shape its model takes, from a folder of PNG/JPEG files, an .npy array, or a known problem's test split."""
import argparse
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow.compat.v1 as tf  # noqa: E402

import checkpoints  # noqa: E402
import config  # noqa: E402
import data_loaders  # noqa: E402
import runtime  # noqa: E402
import evaluator  # noqa: E402
from data_loaders.folder import EXTENSIONS, images_below  # noqa: E402

RESIZE = ("pad", "crop")
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS
# Class names of the labelled problems whose labels are not self-explanatory (else "class <k>").
CLASS_NAMES = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def run_parser(description):
    """An argparse parser with the run folder and the options every tool has."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("logdir", help="a trained run folder (train.py's --logdir)")
    parser.add_argument("--checkpoint", default="",
                        help="a checkpoint prefix or folder (default: the latest in LOGDIR/checkpoints)")
    parser.add_argument("--weights", choices=evaluator.WEIGHTS, default="raw",
                        help="raw (default: the paper's figure) or their Polyak average")
    parser.add_argument("--data_dir", default="", help="where a problem's files are (as train.py's --data_dir)")
    parser.add_argument("--resize", choices=RESIZE, default=None,
                        help="fit images of another size or channel count to the model's: pad (zero borders, "
                             "centre-cropped if larger: MNIST's 28 px to 32) or crop (centre square, Lanczos "
                             "resize); without it such an image is an error")
    return parser


class TrainedRun(object):
    """A run folder's model with its weights on a CPU session: per-image bits/dim, encode and decode."""

    def __init__(self, logdir, checkpoint="", weights="raw"):
        if not os.path.isdir(logdir):
            raise ValueError("%s: not a run folder" % logdir)
        prefix = checkpoints.resolve(checkpoint or logdir)
        saved = checkpoints.saved_config(prefix)
        if saved is None:
            raise ValueError("%s: carries no run config (checkpoint variable %s; written by an older version): %s"
                             % (prefix, checkpoints.CONFIG_KEY, checkpoints.UPGRADE))
        tf.logging.set_verbosity(tf.logging.ERROR)
        tf.disable_v2_behavior()
        args = config.adopt_run(config.parse_args(["--logdir", logdir, "--evaluate"]), saved, prefix)
        self.cfg = config.derive_config(args, saved["image_shape"], saved["n_y"], saved["n_train_images"],
                                        saved["n_test"], 1)
        self.prefix, self.weights, self.logdir, self._model = prefix, weights, logdir, None
        saved_dir = saved.get("data_dir") or ""  # the run's --data_dir, when it is on this machine
        self.data_dir = saved_dir if os.path.isdir(saved_dir) else ""
        self.image_shape = tuple(self.cfg.image_shape)

    @property
    def model(self):
        """The run's model-only graphs (evaluator.Evaluator) with the checkpoint's weights, built on first use
        (images are checked before)."""
        if self._model is None:
            backend = runtime.make_backend("none", "cpu")
            self._model = evaluator.Evaluator(self.cfg, backend, lambda graph: runtime.make_session(
                "cpu", backend, graph=graph))
            self._model.restore(self.prefix)
        return self._model

    def bits_per_dim(self, x, y, n_draws=1):
        """Bits/dim of each image [N], the mean over `n_draws` dequantisation draws; image i's noise is test
        image i's in train.py --evaluate, so a problem's test split gives --evaluate's figures."""
        batches = ((x[i:i + self.cfg.local_batch_test], y[i:i + self.cfg.local_batch_test])
                   for i in range(0, len(x), self.cfg.local_batch_test))
        return self.model.eval_per_image(batches, 0, n_draws, self.weights)["bits_x"]

    def encode(self, x, y):
        return self.model.encode(x, y, self.weights)

    def decode(self, z, y):
        return self.model.decode(z, y, self.weights)

    def level_slices(self):
        """Each level's slice of a flat latent z (first level first)."""
        ends = np.cumsum(self.model.z_sizes)
        return [slice(end - size, end) for end, size in zip(ends, self.model.z_sizes)]

    def class_names(self):
        names = CLASS_NAMES.get(self.cfg.problem, [])
        return [names[k] if k < len(names) else "class %d" % k for k in range(self.cfg.n_y)]

    def load_images(self, source, resize=None, data_dir="", n=None):
        """(uint8 images [N, H, W, C] in the model's shape, int32 labels [N] (zeros if none), their names)."""
        return load_images(source, self.image_shape, resize, data_dir or self.data_dir, n,
                           self.cfg.problem, self.cfg.n_channels)


def load_images(source, shape, resize=None, data_dir="", n=None, own_problem=None, n_channels=None):
    """Images of `shape` (H, W, C) from `source`: a folder of PNG/JPEG files (sorted paths below it), an .npy
    array (uint8 [N, H, W(, C)]), a problem name (its test split, from data_dir or the standard places), or
    "test" (own_problem's). First `n` only, if given. Another size or channel count is an error naming the
    image, unless `resize` ("pad" or "crop") says how to fit it."""
    if resize not in (None,) + RESIZE:
        raise ValueError("resize %r: expected one of %s" % (resize, ", ".join(RESIZE)))
    if os.path.isdir(source):
        paths = images_below(source)[:n]
        if not paths:
            raise ValueError("%s: no %s images below it" % (source, "/".join(EXTENSIONS)))
        x = np.stack([_fit(_read(p), shape, resize, p) for p in paths])
        return x, np.zeros(len(x), np.int32), [os.path.relpath(p, source) for p in paths]
    if source.endswith(".npy"):
        return _from_npy(source, shape, resize, n)
    problem = own_problem if source == "test" else source
    if problem not in data_loaders.REGISTRY:
        raise ValueError("%s: not a folder, an .npy file, 'test' or a problem (%s)"
                         % (source, ", ".join(data_loaders.PROBLEMS)))
    data = data_loaders.get_data(problem, data_dir=data_dir or None, image_size=shape[0], n_test=n, dal=0,
                                 n_channels=n_channels if problem == own_problem else None)
    xs, ys = zip(*data.test_batches(256))
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
    x = np.stack([_fit(image, shape, resize, "%s test image %d" % (problem, i)) for i, image in enumerate(x)])
    return x, y, [str(i) for i in range(len(x))]


def _read(path):
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError("%s: not a readable image (%s)" % (path, exc)) from exc


def _from_npy(path, shape, resize, n):
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError("%s: not a readable .npy array (%s)" % (path, exc)) from exc
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError("%s: %s array of shape %s; expected uint8 images [N, H, W] or [N, H, W, C]"
                         % (path, x.dtype, x.shape))
    x = x[:n]
    x = np.stack([_fit(image, shape, resize, "%s image %d" % (path, i)) for i, image in enumerate(x)])
    return x, np.zeros(len(x), np.int32), [str(i) for i in range(len(x))]


def _fit(image, shape, resize, name):
    """uint8 [H, W, C] of `shape` from a PIL image or an array, fitted as `resize` says, or a ValueError."""
    h, w, c = shape
    array = np.asarray(image, np.uint8) if isinstance(image, np.ndarray) else None
    if array is None and image.mode in ("L", "RGB"):
        array = np.asarray(image, np.uint8)
    if array is not None:
        array = array.reshape(array.shape[:2] + (-1,))
        if array.shape == (h, w, c):
            return array
    if resize is None:
        got = "%dx%dx%d" % array.shape if array is not None else "%dx%d %s" % (image.size[1], image.size[0],
                                                                              image.mode)
        raise ValueError("%s: %s, the model takes %dx%dx%d images; pass --resize pad or --resize crop to fit it"
                         % (name, got, h, w, c))
    if array is not None:
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    image = image.convert("L" if c == 1 else "RGB")
    if resize == "crop":
        (iw, ih), side = image.size, min(image.size)
        image = image.crop(((iw - side) // 2, (ih - side) // 2, (iw - side) // 2 + side, (ih - side) // 2 + side))
        image = image.resize((w, h), _LANCZOS)
    array = np.asarray(image, np.uint8).reshape(image.size[1], image.size[0], c)
    if resize == "pad":
        top, left = (h - array.shape[0]) // 2, (w - array.shape[1]) // 2
        array = array[max(-top, 0):, max(-left, 0):][:h, :w]  # centre-cropped where larger
        padded = np.zeros((h, w, c), np.uint8)
        padded[max(top, 0):max(top, 0) + array.shape[0], max(left, 0):max(left, 0) + array.shape[1]] = array
        array = padded
    return array


def auroc(scores_in, scores_out):
    """The area under the ROC curve of `score > threshold` as a detector of the second set: the probability
    that an image of it scores higher than one of the first (ties count half; Mann-Whitney)."""
    a, b = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
    ranks = _ranks(np.concatenate([a, b]))
    return float((ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2.0) / (len(a) * len(b)))


def _ranks(values):
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, ranks)
    return sums[inverse] / counts[inverse]


def main(tool):
    """Run `tool(argv)`: errors (bad input, no run) end with one line and status 2."""
    try:
        return tool(sys.argv[1:])
    except (ValueError, OSError) as e:
        if os.environ.get("GLOW_TRACEBACK"):
            raise
        sys.stderr.write("error: %s\n(set GLOW_TRACEBACK=1 for the traceback)\n" % e)
        return 2
