"""Data for Glow (Kingma & Dhariwal 2018): the problems of openai/glow and a few more,
as uint8 image batches sharded over ranks.

    data = get_data("cifar10", rank=r, size=n)
    for x, y in data.train_batches(batch_size=64, epoch=e): ...   # x uint8 [B, H, W, C]
    for x, y in data.train_stream(64, first=s, count=n): ...      # passes end to end

Problems, their files (any one layout), default image_size and classes n_y:
  mnist, fashion-mnist  train-images-idx3-ubyte, train-labels-idx1-ubyte,
                        t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each raw or .gz);
                        28x28 zero-padded to 32x32 (2 px each side), 1 channel
                        (n_channels=3 tiles it, as openai/glow did); 32 px, n_y 10.
  cifar10               cifar-10-python.tar.gz, cifar-10-batches-py/ (data_batch_1..5,
                        test_batch), cifar-10-binary.tar.gz or cifar-10-batches-bin/
                        (data_batch_1..5.bin, test_batch.bin); 32 px, n_y 10.
  imagenet32/imagenet64 downsampled ImageNet npz: train_data_batch_1..10.npz and
                        val_data.npz ('data' uint8 [N, 3*S*S] CHW, 'labels' 1..1000);
                        32 / 64 px, n_y 1000.
  imagenet-oord (64 px, n_y 1000), imagenet (256, 1000), celeba (256, 1),
  lsun_realnvp (64, 1), lsun (256, 1)
                        openai/glow's TFRecords: {data_dir}/train/train-rNN-s-SSSS-of-TTTT.tfrecords
                        and {data_dir}/validation/validation-rNN-...; features 'shape',
                        'data' (raw uint8 HWC), 'label'. NN = log2(px). lsun_realnvp takes a
                        random 64x64 crop of its ~96 px images (centre crop for test).
                        Get them from https://storage.googleapis.com/glow-demo/data/{name}-tfr.tar.
  folder                PNG/JPEG images under data_dir (required, as is image_size);
                        subfolders at the top level (and no images) are classes, else
                        n_y 1; train/ + test/ subfolders if present, else every 10th image
                        of each class is held out for test. Centre crop + Lanczos resize.

Where files are looked for, in order:
  1. data_dir, if given (only there: a missing file is an error naming it);
  2. /usr/share/datasets/<problem> (Debian's dataset-fashion-mnist installs there),
     ~/.keras/datasets/<problem>, ~/.keras/datasets, ./data/<problem>;
  3. cache_dir (default ~/.cache/glow-data/<problem>), and, if download=True and the
     problem is mnist, fashion-mnist or cifar10 (binary version), a download there over
     HTTPS, checked against the published size and SHA-256 before use.
If nothing is found, one DataError lists the files, every folder looked in, and how to
get them.

image_size must be a power of two not above the stored size; a smaller one is made by
average pooling (the factor must be a power of two). n_train / n_test keep the first
images of a split (train.py's --train_subset and --n_test; its --n_train is the epoch
size). dal is openai/glow's augmentation level (see augment.py): 0 none, 1 random
shifts, 2 also flips, rotation, zoom and shear (mnist: shifts only; the TFRecord
problems: none, as in openai/glow). Safety: CIFAR pickles are read by an unpickler that
builds only numpy arrays, npz files with allow_pickle=False, archives are read without
extracting, and headers are checked against the bytes present.
"""
import numpy as np

from .augment import Augmentation, augmentation_for
from .build import build, check_size, head
from .data import Data
from .errors import DataError
from .images import check_image_size
from .locate import default_cache_dir, find_data
from .problems import PROBLEMS_TABLE

__all__ = ["PROBLEMS", "get_data", "Data", "DataError", "Augmentation"]

PROBLEMS = tuple(PROBLEMS_TABLE)


def get_data(problem, data_dir=None, image_size=None, n_train=None, n_test=None, dal=1, seed=0,
             rank=0, size=1, n_channels=None, download=True, cache_dir=None):
    """Find, check and load `problem`; return a Data for rank `rank` of `size`.

    image_size: px (power of two), default per problem; n_train / n_test: keep the first
    so many images of each split (default all); dal: augmentation level 0, 1 or 2;
    seed: fixes shuffling and augmentation; n_channels: None (the problem's own), 1 or 3;
    download: allow fetching mnist / fashion-mnist / cifar10 into cache_dir.
    Raises DataError (a ValueError) naming the bad argument or file.
    """
    spec = _problem(problem)
    _check_ranks(seed, rank, size)
    image_size = _image_size(spec, image_size)
    augmentation = augmentation_for(spec.name, dal)
    _check_channels(spec, n_channels)
    check_size(spec, image_size)
    cache_dir = cache_dir or default_cache_dir(spec.name)
    found, location = find_data(spec, data_dir, cache_dir, download)
    train, test, n_y, channels = build(spec, found, image_size, n_channels)
    train = head(train, n_train, "n_train (train.py's --train_subset)", "training", spec.name)
    test = head(test, n_test, "n_test", "test", spec.name)
    image_shape = (image_size, image_size, n_channels or channels)
    return Data(spec.name, train, test, n_y, image_shape, augmentation, seed, rank, size, location)


def _problem(name):
    if name not in PROBLEMS_TABLE:
        raise DataError("problem %r: must be one of %s" % (name, ", ".join(PROBLEMS)))
    return PROBLEMS_TABLE[name]


def _check_ranks(seed, rank, size):
    for what, value, low in (("seed", seed, 0), ("size", size, 1), ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError("%s %r: must be an integer >= %d" % (what, value, low))
    if seed >= 2 ** 32:
        raise DataError("seed %d: must be below 2**32 (it seeds numpy's RandomState)" % seed)
    if rank >= size:
        raise DataError("rank %d: must be below size %d" % (rank, size))


def _image_size(spec, image_size):
    if image_size is None:
        if spec.image_size is None:
            raise DataError("image_size: required for problem %s (a power of two, e.g. 32 or 64)"
                            % spec.name)
        return spec.image_size
    return check_image_size(image_size)


def _check_channels(spec, n_channels):
    if n_channels not in (None, 1, 3) or isinstance(n_channels, bool):
        raise DataError("n_channels %r: must be 1, 3 or None (the problem's own)" % (n_channels,))
    if n_channels == 1 and spec.kind not in ("idx", "folder"):
        raise DataError("n_channels 1: problem %s is RGB; 1 channel is for mnist, fashion-mnist "
                        "and folder" % spec.name)
