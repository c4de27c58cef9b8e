"""The table of problems: defaults (as openai/glow's train.py), file layouts, how to get them."""
import collections
import os

from . import cifar, imagenet_npz, tfrecords

Problem = collections.namedtuple("Problem", "name kind image_size n_y expected how_to_get")
Problem.__doc__ = """kind: idx | cifar | npz | tfrecord | folder; image_size: default px
(None: must be given); n_y: classes (None: from the folder); expected: file names
for messages; how_to_get: one line for the not-found message."""

IDX_FILES = (("train_images", "train-images-idx3-ubyte"), ("train_labels", "train-labels-idx1-ubyte"),
             ("test_images", "t10k-images-idx3-ubyte"), ("test_labels", "t10k-labels-idx1-ubyte"))
_IDX_EXPECTED = ["%s[.gz]" % base for _, base in IDX_FILES]
_GLOW_TFR = ("download https://storage.googleapis.com/glow-demo/data/%s-tfr.tar (openai/glow's "
             "README) and untar it")
_DOWNSAMPLED = ("download Imagenet%d_train_npz.zip (ImageNet 64: part1 and part2) and "
                "Imagenet%d_val_npz.zip from https://image-net.org/download-images.php "
                "(free account) and unzip them")

PROBLEMS_TABLE = collections.OrderedDict((p.name, p) for p in [
    Problem("mnist", "idx", 32, 10, _IDX_EXPECTED,
            "from https://storage.googleapis.com/cvdf-datasets/mnist/ (downloaded automatically)"),
    Problem("fashion-mnist", "idx", 32, 10, _IDX_EXPECTED,
            "apt install dataset-fashion-mnist, or from https://github.com/zalandoresearch/"
            "fashion-mnist (downloaded automatically)"),
    Problem("cifar10", "cifar", 32, 10, cifar.EXPECTED,
            "from https://www.cs.toronto.edu/~kriz/cifar.html (downloaded automatically)"),
    Problem("imagenet32", "npz", 32, 1000, imagenet_npz.EXPECTED, _DOWNSAMPLED % (32, 32)),
    Problem("imagenet64", "npz", 64, 1000, imagenet_npz.EXPECTED, _DOWNSAMPLED % (64, 64)),
    Problem("imagenet-oord", "tfrecord", 64, 1000, tfrecords.EXPECTED, _GLOW_TFR % "imagenet-oord"),
    Problem("imagenet", "tfrecord", 256, 1000, tfrecords.EXPECTED, _GLOW_TFR % "imagenet"),
    Problem("celeba", "tfrecord", 256, 1, tfrecords.EXPECTED, _GLOW_TFR % "celeba"),
    Problem("lsun_realnvp", "tfrecord", 64, 1, tfrecords.EXPECTED,
            (_GLOW_TFR % "lsun_realnvp") + "; pass the category folder (e.g. .../bedroom)"),
    Problem("lsun", "tfrecord", 256, 1, tfrecords.EXPECTED,
            (_GLOW_TFR % "lsun") + "; pass the category folder (e.g. .../bedroom)"),
    Problem("folder", "folder", None, None, ["*.png, *.jpg, *.jpeg (class subfolders optional)"],
            "pass --data_dir with your images"),
])


def find_idx(folder):
    """{role: path} of the four IDX files in folder (raw or .gz), or None if any is missing."""
    found = {}
    for role, base in IDX_FILES:
        hits = [p for p in (os.path.join(folder, base), os.path.join(folder, base + ".gz"))
                if os.path.isfile(p)]
        if not hits:
            return None
        found[role] = hits[0]
    return found


def missing_idx(folder):
    """The IDX names (with [.gz]) absent from folder."""
    return ["%s[.gz]" % base for _, base in IDX_FILES
            if not any(os.path.isfile(os.path.join(folder, base + ext)) for ext in ("", ".gz"))]


def find(problem, folder):
    """What the problem's loader needs from folder, or None if folder does not hold it."""
    if not os.path.isdir(folder):
        return None
    kind = problem.kind
    if kind == "idx":
        return find_idx(folder)
    if kind == "cifar":
        return cifar.find(folder)
    if kind == "npz":
        return imagenet_npz.find(folder)
    if kind == "tfrecord":
        return tfrecords.find(folder)
    return folder
