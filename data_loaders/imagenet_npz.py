"""Format: downsampled ImageNet (van den Oord et al. 2016; Chrabaszcz et al. 2017) npz batches.

Each file holds 'data' uint8 [N, 3*S*S] (CHW rows, S = 32 or 64) and 'labels' 1..1000.
They are read with allow_pickle=False, one file at a time when needed (ImageNet 64 is
15 GB); up front only the .npy headers are read, to count and check the images.
"""
import os
import zipfile

import numpy as np

from .common import DataError, downsample, pool_factor
from .sources import PartsSource

TRAIN = ["train_data_batch_%d.npz" % i for i in range(1, 11)]
VAL = "val_data.npz"
EXPECTED = "train_data_batch_{1..10}.npz, " + VAL
SEARCHED, CHANNELS = True, 3


def find(folder):
    """(train paths, [test path]) if folder (or one folder below it) has every file, else None."""
    places = [folder] + sorted(os.path.join(folder, d) for d in os.listdir(folder)
                               if os.path.isdir(os.path.join(folder, d)))
    paths = []
    for name in TRAIN + [VAL]:
        hits = [os.path.join(p, name) for p in places if os.path.isfile(os.path.join(p, name))]
        if not hits:
            return None
        paths.append(hits[0])
    return paths[:-1], paths[-1:]


def lacks(folder):
    return "lacks " + ", ".join(n for n in TRAIN + [VAL] if not os.path.isfile(os.path.join(folder, n)))


def load(problem, found, image_size, n_channels):
    side = problem.native
    factor = pool_factor(side, image_size, "problem %s" % problem.name)
    train, test = (PartsSource([_count(p, side) for p in paths], _Reader(paths, side, factor)) for paths in found)
    return train, test, problem.n_y


def _count(path, side):
    """Number of images in one npz batch, after checking its headers."""
    try:
        with zipfile.ZipFile(path) as archive:
            data_shape, data_dtype = _member_header(archive, path, "data")
            label_shape, _ = _member_header(archive, path, "labels")
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError("%s: not a readable .npz file (%s)" % (path, exc)) from exc
    if data_dtype != np.uint8 or len(data_shape) != 2 or data_shape[1] != 3 * side * side:
        raise DataError("%s: 'data' is %s %s, expected uint8 [N, %d] (%dx%d RGB)" % (
            path, data_dtype, data_shape, 3 * side * side, side, side))
    if label_shape != data_shape[:1]:
        raise DataError("%s: %d images but 'labels' has shape %s" % (path, data_shape[0], label_shape))
    return data_shape[0]


def _member_header(archive, path, key):
    """(shape, dtype) of member key.npy of an open npz, from its header alone."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with archive.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                raise DataError("%s: %s.npy has .npy format version %d.%d, expected 1.0 or 2.0"
                                % (path, key, version[0], version[1]))
            shape, _, dtype = readers[version](f)
    except DataError:
        raise
    except KeyError as exc:
        raise DataError("%s: no array %r in it (expected 'data' and 'labels')" % (path, key)) from exc
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError("%s: not a readable .npz file (%s)" % (path, exc)) from exc
    return shape, dtype


class _Reader(object):
    """read(part, lo, hi, rng) -> images lo..hi-1 of npz file `part`, pooled by `factor`."""

    def __init__(self, paths, side, factor):
        self.paths, self.side, self.factor = paths, side, factor

    def __call__(self, part, lo, hi, rng=None):
        path = self.paths[part]
        try:
            with np.load(path, allow_pickle=False) as npz:
                data, labels = npz["data"][lo:hi], npz["labels"][lo:hi]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError("%s: cannot load it with allow_pickle=False (%s)" % (path, exc)) from exc
        labels = labels.astype(np.int64) - 1  # the files number classes 1..1000
        if len(labels) and (labels.min() < 0 or labels.max() >= 1000):
            raise DataError("%s: labels must be 1..1000, found %d..%d" % (path, labels.min() + 1, labels.max() + 1))
        s = self.side
        x = data.reshape(-1, 3, s, s).transpose(0, 2, 3, 1)  # [n, S, S, 3]
        return downsample(np.ascontiguousarray(x), self.factor), labels.astype(np.int32)
