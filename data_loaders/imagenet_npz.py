"""Format: downsampled ImageNet (van den Oord et al. 2016; Chrabaszcz et al. 2017) npz batches,
'data' uint8 [N, 3*S*S] (CHW rows, S = 32 or 64) and 'labels' 1..1000.  Up front only the .npy
headers are read, to count and check the images; a file is loaded (allow_pickle=False) when
its images are needed, as ImageNet 64 is 15 GB.
"""
import functools
import os
import zipfile

import numpy as np

from .common import DataError, PartsSource, downsample, pool_factor

TRAIN = ["train_data_batch_%d.npz" % i for i in range(1, 11)]
VAL = "val_data.npz"
EXPECTED = "train_data_batch_{1..10}.npz, " + VAL
SEARCHED, CHANNELS = True, 3
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def find(folder):
    """(train paths, [test path]) if folder (or one folder below it) has every file, else None."""
    places = [folder] + sorted(os.path.join(folder, d) for d in os.listdir(folder)
                               if os.path.isdir(os.path.join(folder, d)))
    paths = [next((os.path.join(p, n) for p in places if os.path.isfile(os.path.join(p, n))), None)
             for n in TRAIN + [VAL]]
    return None if None in paths else (paths[:-1], paths[-1:])


def lacks(folder):
    return "lacks " + ", ".join(n for n in TRAIN + [VAL] if not os.path.isfile(os.path.join(folder, n)))


def load(problem, found, image_size, n_channels):
    side = problem.native
    factor = pool_factor(side, image_size, "problem %s" % problem.name)
    train, test = (PartsSource([_count(p, side) for p in paths], functools.partial(_read, paths, side, factor))
                   for paths in found)
    return train, test, problem.n_y


def _count(path, side):
    """Number of images in one npz batch, from its checked .npy headers alone."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for key in ("data", "labels"):
                with archive.open(key + ".npy") as f:
                    version = np.lib.format.read_magic(f)
                    if version not in _HEADER_READERS:
                        raise DataError("%s: %s.npy has .npy format version %d.%d, expected 1.0 or 2.0"
                                        % (path, key, version[0], version[1]))
                    headers[key] = _HEADER_READERS[version](f)  # (shape, fortran_order, dtype)
    except DataError:
        raise
    except KeyError as exc:
        raise DataError("%s: no array %r in it (expected 'data' and 'labels')" % (path, key)) from exc
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DataError("%s: not a readable .npz file (%s)" % (path, exc)) from exc
    (data_shape, _, data_dtype), label_shape = headers["data"], headers["labels"][0]
    if data_dtype != np.uint8 or len(data_shape) != 2 or data_shape[1] != 3 * side * side:
        raise DataError("%s: 'data' is %s %s, expected uint8 [N, %d] (%dx%d RGB)" % (
            path, data_dtype, data_shape, 3 * side * side, side, side))
    if label_shape != data_shape[:1]:
        raise DataError("%s: %d images but 'labels' has shape %s" % (path, data_shape[0], label_shape))
    return data_shape[0]


def _read(paths, side, factor, part, lo, hi, rng=None):
    """Images lo..hi-1 of npz file `part`: (x uint8 [n, S, S, 3] pooled by factor, y int32 [n])."""
    try:
        with np.load(paths[part], allow_pickle=False) as npz:
            data, labels = npz["data"][lo:hi], npz["labels"][lo:hi]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError("%s: cannot load it with allow_pickle=False (%s)" % (paths[part], exc)) from exc
    labels = labels.astype(np.int64) - 1  # the files number classes 1..1000
    if len(labels) and (labels.min() < 0 or labels.max() >= 1000):
        raise DataError("%s: labels must be 1..1000, found %d..%d" % (paths[part], labels.min() + 1, labels.max() + 1))
    x = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)  # [n, S, S, 3]
    return downsample(np.ascontiguousarray(x), factor), labels.astype(np.int32)
