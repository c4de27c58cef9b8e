"""Format: IDX files (LeCun et al.'s MNIST format, also Fashion-MNIST), raw or gzipped: a
big-endian int32 magic (2051: uint8 images [N, rows, cols]; 2049: uint8 labels [N]), a
big-endian int32 per dimension, then the bytes.  The header is checked against the bytes
present before anything is allocated.  Images are zero-padded to 32x32, as openai/glow did.
"""
import gzip
import os
import struct
import zlib

import numpy as np

from .common import ArraySource, DataError, pool_factor

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
EXPECTED = ", ".join(name + "[.gz]" for name in FILES)
SEARCHED, CHANNELS = True, 1
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
_MAX_BYTES = 1 << 32  # no genuine MNIST-format file is near this; a header claiming more is corrupt
_CHUNK = 1 << 24


def _path(folder, name):
    """folder/name, else folder/name.gz, else None."""
    path = os.path.join(folder, name)
    return next((p for p in (path, path + ".gz") if os.path.isfile(p)), None)


def find(folder):
    paths = [_path(folder, name) for name in FILES]
    return None if None in paths else paths


def lacks(folder):
    return "lacks " + ", ".join(name + "[.gz]" for name in FILES if _path(folder, name) is None)


def load(problem, found, image_size, n_channels):
    factor = pool_factor(problem.native, image_size, "problem %s" % problem.name)
    splits = []
    for images_path, labels_path in (found[:2], found[2:]):
        x, y = _read(images_path, IMAGES_MAGIC), _read(labels_path, LABELS_MAGIC)
        if x.shape[1:] != (28, 28):
            raise DataError("%s: images are %dx%d, expected 28x28" % (images_path, x.shape[1], x.shape[2]))
        if len(x) != len(y):
            raise DataError("%s has %d images but %s has %d labels" % (images_path, len(x), labels_path, len(y)))
        if len(y) and y.max() >= problem.n_y:
            raise DataError("%s: label %d out of range 0..%d" % (labels_path, y.max(), problem.n_y - 1))
        x = np.pad(x, ((0, 0), (2, 2), (2, 2)), mode="constant")[..., None]  # [N, 32, 32, 1]
        splits.append(ArraySource(x, y.astype(np.int32), factor))
    return splits[0], splits[1], problem.n_y


def _read(path, magic):
    """The uint8 array in the IDX file `path`, whose magic must be `magic`.  The data size its
    header implies is refused past _MAX_BYTES or unlike a raw file's size; a gzip file's size
    says nothing of its content, so it is read in chunks: memory grows only with the bytes present."""
    n_dims = magic & 0xFF  # the magic's low byte counts the dimensions
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            head = f.read(4 * (1 + n_dims))
            if len(head) < 4 * (1 + n_dims):
                raise DataError("%s: %d bytes, too short for its %d-byte IDX header" % (
                    path, len(head), 4 * (1 + n_dims)))
            found, *dims = struct.unpack(">%di" % (1 + n_dims), head)
            if found != magic:
                raise DataError("%s: IDX magic %d, expected %d (%s)" % (
                    path, found, magic, "images" if magic == IMAGES_MAGIC else "labels"))
            n_bytes, shape = int(np.prod(dims, dtype=np.int64)), "x".join(map(str, dims))
            if min(dims) < 0 or n_bytes > _MAX_BYTES:
                raise DataError("%s: header claims dimensions %s (%d bytes), not a plausible MNIST-format file" % (
                    path, shape, n_bytes))
            held = os.path.getsize(path) - len(head)
            if not path.endswith(".gz") and held != n_bytes:
                raise DataError("%s: header says %s = %d bytes of data, the file holds %d" % (
                    path, shape, n_bytes, held))
            data = bytearray()
            while len(data) < n_bytes:
                chunk = f.read(min(_CHUNK, n_bytes - len(data)))
                if not chunk:
                    raise DataError("%s: header says %s = %d bytes of data, the file holds only %d (truncated)" % (
                        path, shape, n_bytes, len(data)))
                data += chunk
            if f.read(1):
                raise DataError("%s: more data than its header (%s) describes" % (path, shape))
            return np.frombuffer(data, np.uint8).reshape(dims)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError("%s: cannot read it (%s): the file is damaged or truncated; delete it and fetch it again" % (
            path, exc)) from exc
