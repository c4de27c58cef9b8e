"""Data for Glow (Kingma & Dhariwal 2018): the problems of openai/glow and a few more,
as uint8 image batches [B, H, W, C] sharded over ranks.

    data = get_data("cifar10", rank=r, size=n)
    for x, y in data.train_stream(64, first=s, count=n): ...   # passes over the data, end to end

Problems (default px, classes n_y) and their files, any one layout:
  mnist, fashion-mnist (32, 10)  train-images-idx3-ubyte, train-labels-idx1-ubyte,
        t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each raw or .gz; 28x28 zero-padded
        to 32x32, 1 channel (n_channels=3 tiles it, as openai/glow did).
  cifar10 (32, 10)  cifar-10-python.tar.gz, cifar-10-batches-py/{data_batch_1..5,test_batch},
        cifar-10-binary.tar.gz or cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin.
  imagenet32, imagenet64 (32 / 64, 1000)  train_data_batch_1..10.npz and val_data.npz.
  imagenet-oord (64, 1000), imagenet (256, 1000), celeba (256, 1), lsun_realnvp (64, 1),
  lsun (256, 1)  openai/glow's TFRecords, train/train-rNN-s-SSSS-of-TTTT.tfrecords and
        validation/validation-rNN-...; https://storage.googleapis.com/glow-demo/data/{name}-tfr.tar.
  folder  PNG/JPEG images under data_dir (required, as is image_size); see folder.py.
Files are looked for in data_dir if given (only there); else in /usr/share/datasets/<problem>
(Debian's dataset-fashion-mnist), ~/.keras/datasets[/<problem>], ./data/<problem>, then
cache_dir (default ~/.cache/glow-data/<problem>), where mnist, fashion-mnist and cifar10
are downloaded if download=True, checked against the published SHA-256.  If nothing is
found, one DataError lists the files, every folder looked in, and how to get them.
A smaller image_size is made by average pooling (by a power of two).  Nothing read is run
or extracted: CIFAR pickles go through an unpickler that builds only numpy arrays, npz
files load with allow_pickle=False, archives are read in memory, headers are checked
against the bytes present.

The registry: REGISTRY maps each problem to a Problem whose `fmt` is a format module
(idx, cifar, imagenet_npz, tfrecords, folder); every format module has the same names:
  EXPECTED      str: the files it reads, for messages
  SEARCHED      bool: looked for in the standard folders (False: only at data_dir)
  CHANNELS      channels of the stored images: 1, 3, or None (as asked, RGB by default)
  find(folder)  what load needs from the folder, or None if it does not hold the data
  lacks(folder) str: what the folder lacks, for the not-found message
  load(problem, found, image_size, n_channels) -> (train, test, n_y): sources.py's
                sources of uint8 images average-pooled to image_size px.
locate.py and get_data call them; nothing else dispatches on the format.
"""
import collections

import numpy as np

from . import cifar, folder, idx, imagenet_npz, tfrecords
from .augment import augmentation_for
from .common import DataError, check_image_size, check_int, pool_factor
from .data import Data
from .locate import default_cache_dir, find_data

__all__ = ["PROBLEMS", "get_data", "Data", "DataError"]

Problem = collections.namedtuple("Problem", "name fmt image_size native n_y how_to_get")
Problem.__doc__ = """fmt: the format module; image_size: default px (None: must be given);
native: px of the stored images if fixed (None: read from the files); n_y: classes (None:
from the files); how_to_get: one line for the not-found message."""

_GLOW_TFR = "download https://storage.googleapis.com/glow-demo/data/%s-tfr.tar (openai/glow's README) and untar it"
_LSUN = "; pass the category folder (e.g. .../bedroom)"
_DOWNSAMPLED = ("download Imagenet%d_train_npz.zip (ImageNet 64: part1 and part2) and Imagenet%d_val_npz.zip "
                "from https://image-net.org/download-images.php (free account) and unzip them")
REGISTRY = collections.OrderedDict((p.name, p) for p in [
    Problem("mnist", idx, 32, 32, 10,
            "from https://storage.googleapis.com/cvdf-datasets/mnist/ (downloaded automatically)"),
    Problem("fashion-mnist", idx, 32, 32, 10, "apt install dataset-fashion-mnist, or from "
            "https://github.com/zalandoresearch/fashion-mnist (downloaded automatically)"),
    Problem("cifar10", cifar, 32, 32, 10,
            "from https://www.cs.toronto.edu/~kriz/cifar.html (downloaded automatically)"),
    Problem("imagenet32", imagenet_npz, 32, 32, 1000, _DOWNSAMPLED % (32, 32)),
    Problem("imagenet64", imagenet_npz, 64, 64, 1000, _DOWNSAMPLED % (64, 64)),
    Problem("imagenet-oord", tfrecords, 64, None, 1000, _GLOW_TFR % "imagenet-oord"),
    Problem("imagenet", tfrecords, 256, None, 1000, _GLOW_TFR % "imagenet"),
    Problem("celeba", tfrecords, 256, None, 1, _GLOW_TFR % "celeba"),
    Problem("lsun_realnvp", tfrecords, 64, None, 1, _GLOW_TFR % "lsun_realnvp" + _LSUN),
    Problem("lsun", tfrecords, 256, None, 1, _GLOW_TFR % "lsun" + _LSUN),
    Problem("folder", folder, None, None, None, "pass --data_dir with your images"),
])
PROBLEMS = tuple(REGISTRY)


def get_data(problem, data_dir=None, image_size=None, n_train=None, n_test=None, dal=1, seed=0,
             rank=0, size=1, n_channels=None, download=True, cache_dir=None):
    """Find, check and load `problem`; return a Data for rank `rank` of `size`.

    image_size: px (power of two), default per problem; n_train / n_test: keep the first
    so many images of each split (default all); dal: augmentation level 0, 1 or 2;
    seed: fixes shuffling and augmentation; n_channels: None (the problem's own), 1 or 3;
    download: allow fetching mnist / fashion-mnist / cifar10 into cache_dir.
    The arguments are checked before any file is read or downloaded (n_train and n_test,
    against the split sizes, after).  Raises DataError (a ValueError) naming the bad
    argument or file.
    """
    if problem not in REGISTRY:
        raise DataError("problem %r: must be one of %s" % (problem, ", ".join(PROBLEMS)))
    spec = REGISTRY[problem]
    seed, size, rank = check_int(seed, "seed", 0), check_int(size, "size", 1), check_int(rank, "rank", 0)
    if seed >= 2 ** 32:
        raise DataError("seed %d: must be below 2**32 (it seeds numpy's RandomState)" % seed)
    if rank >= size:
        raise DataError("rank %d: must be below size %d" % (rank, size))
    if image_size is None and spec.image_size is None:
        raise DataError("image_size: required for problem %s (a power of two, e.g. 32 or 64)" % spec.name)
    image_size = spec.image_size if image_size is None else check_image_size(image_size)
    augmentation = augmentation_for(spec.name, dal)
    _check_channels(spec, n_channels)
    if spec.native is not None:
        pool_factor(spec.native, image_size, "problem %s" % spec.name)
    found, location = find_data(spec, data_dir, cache_dir or default_cache_dir(spec.name), download)
    train, test, n_y = spec.fmt.load(spec, found, image_size, n_channels)
    train = _head(train, n_train, "n_train (train.py's --train_subset)", "training", spec.name)
    test = _head(test, n_test, "n_test", "test", spec.name)
    image_shape = (image_size, image_size, n_channels or spec.fmt.CHANNELS or 3)
    return Data(spec.name, train, test, n_y, image_shape, augmentation, seed, rank, size, location)


def _check_channels(spec, n_channels):
    if n_channels not in (None, 1, 3) or isinstance(n_channels, bool):
        raise DataError("n_channels %r: must be 1, 3 or None (the problem's own)" % (n_channels,))
    if n_channels == 1 and spec.fmt.CHANNELS == 3:
        grey = [p.name for p in REGISTRY.values() if p.fmt.CHANNELS != 3]
        raise DataError("n_channels 1: problem %s is RGB; 1 channel is for %s" % (spec.name, ", ".join(grey)))


def _head(source, n, what, split, problem):
    """The first n images of a split (all if n is None), or DataError if n does not fit."""
    if n is None:
        return source
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= source.n:
        raise DataError("%s %r: must be 1..%d (the %s split of %s has %d images)" % (
            what, n, source.n, split, problem, source.n))
    return source.head(int(n))
