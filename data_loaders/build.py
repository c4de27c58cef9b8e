"""Build the train and test sources of each kind of problem at the requested image size."""
import numpy as np

from . import cifar, folder, imagenet_npz, tfrecords
from .errors import DataError
from .idx import load_idx_pair
from .images import downsample, pad_28_to_32, pool_factor
from .sources import ArraySource, PartsSource

# Native size and stored channels of the problems whose size does not depend on the files.
NATIVE = {"idx": (32, 1), "cifar": (32, 3), "imagenet32": (32, 3), "imagenet64": (64, 3)}


def check_size(problem, image_size):
    """Fail fast, before any file is read, on an image_size the data cannot give."""
    key = problem.name if problem.kind == "npz" else problem.kind
    if key in NATIVE:
        pool_factor(NATIVE[key][0], image_size, "problem %s" % problem.name)


def build(problem, found, image_size, n_channels):
    """(train source, test source, n_y, stored channels) from what locate() found."""
    if problem.kind == "idx":
        return _idx(problem, found, image_size)
    if problem.kind == "cifar":
        x_train, y_train, x_test, y_test = cifar.load(found)
        factor = pool_factor(32, image_size, "problem cifar10")
        return (ArraySource(downsample(x_train, factor), y_train),
                ArraySource(downsample(x_test, factor), y_test), 10, 3)
    if problem.kind == "npz":
        return _npz(problem, found, image_size)
    if problem.kind == "tfrecord":
        return _tfrecord(problem, found, image_size)
    return _folder(found, image_size, n_channels or 3)


def _idx(problem, found, image_size):
    factor = pool_factor(32, image_size, "problem %s" % problem.name)
    splits = []
    for images, labels in (("train_images", "train_labels"), ("test_images", "test_labels")):
        x, y = load_idx_pair(found[images], found[labels])
        splits.append(ArraySource(downsample(pad_28_to_32(x), factor), y))
    return splits[0], splits[1], 10, 1


def _npz(problem, found, image_size):
    side = NATIVE[problem.name][0]
    factor = pool_factor(side, image_size, "problem %s" % problem.name)
    sources = []
    for split in ("train", "test"):
        paths = found[split]
        counts = [imagenet_npz.count(p, side) for p in paths]
        sources.append(PartsSource(counts, imagenet_npz.NpzReader(paths, side, factor)))
    return sources[0], sources[1], 1000, 3


def _tfrecord(problem, found, image_size):
    sources = []
    for split in tfrecords.SPLITS:
        paths, native = tfrecords.shard_files(found, split, image_size)
        factor = pool_factor(native, image_size, "%s TFRecords" % split)
        counts = [tfrecords.count_records(p) for p in paths]
        read = tfrecords.TFRecordReader(paths, native, factor, problem.n_y,
                                        crops=problem.name == "lsun_realnvp")
        sources.append(PartsSource(counts, read))
    return sources[0], sources[1], problem.n_y, 3


def _folder(data_dir, image_size, n_channels):
    train, test, names = folder.scan(data_dir)
    sources = [ArraySource(*folder.load(items, image_size, n_channels)) for items in (train, test)]
    return sources[0], sources[1], max(len(names), 1), n_channels


def head(source, n, what, split, problem):
    """The first n images of a split (all if n is None), or DataError if n does not fit."""
    if n is None:
        return source
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= source.n:
        raise DataError("%s %r: must be 1..%d (the %s split of %s has %d images)" % (
            what, n, source.n, split, problem, source.n))
    return source.head(int(n))
