"""IDX files (LeCun et al.'s MNIST format, also Fashion-MNIST), raw or gzipped.

Layout: a big-endian int32 magic (0x0803 = 2051 for uint8 images [N, rows,
cols], 0x0801 = 2049 for uint8 labels [N]), one big-endian int32 per
dimension, then the bytes.  The header is checked, and the byte count it
implies is compared with what the file holds, before anything is allocated.
"""
import gzip
import os
import struct
import zlib

import numpy as np

from .errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
# No genuine MNIST-format file is near this; a header claiming more is corrupt.
_MAX_BYTES = 1 << 32
_CHUNK = 1 << 24


def read_idx(path, magic):
    """The uint8 array stored in the IDX file `path`, whose magic must be `magic`."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            dims = _read_header(f, path, magic)
            n_bytes = int(np.prod(dims, dtype=np.int64))
            _check_size(path, dims, n_bytes)
            data = _read_exactly(f, n_bytes, path, dims)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError("%s: cannot read it (%s): the file is damaged or truncated; delete it "
                        "and fetch it again" % (path, exc)) from exc
    return np.frombuffer(data, np.uint8).reshape(dims)


def _read_header(f, path, magic):
    head = f.read(4)
    if len(head) < 4:
        raise DataError("%s: too short for an IDX header" % path)
    (found,) = struct.unpack(">i", head)
    if found != magic:
        raise DataError("%s: IDX magic %d, expected %d (%s)" % (
            path, found, magic, "images" if magic == IMAGES_MAGIC else "labels"))
    n_dims = magic & 0xFF
    raw = f.read(4 * n_dims)
    if len(raw) < 4 * n_dims:
        raise DataError("%s: IDX header cut short" % path)
    return struct.unpack(">%di" % n_dims, raw)


def _check_size(path, dims, n_bytes):
    """Reject impossible headers before reading: vs a hard cap, and vs the size of a raw file."""
    if min(dims) < 0 or n_bytes > _MAX_BYTES:
        raise DataError("%s: header claims dimensions %s (%d bytes), not a plausible "
                        "MNIST-format file" % (path, "x".join(map(str, dims)), n_bytes))
    if not path.endswith(".gz"):
        held = os.path.getsize(path) - 4 * (1 + len(dims))
        if held != n_bytes:
            raise DataError("%s: header says %s = %d bytes of data, the file holds %d" % (
                path, "x".join(map(str, dims)), n_bytes, held))


def _read_exactly(f, n_bytes, path, dims):
    """Read n_bytes in chunks (memory grows only with the data really present)."""
    data = bytearray()
    while len(data) < n_bytes:
        chunk = f.read(min(_CHUNK, n_bytes - len(data)))
        if not chunk:
            raise DataError("%s: header says %s = %d bytes of data, the file holds only %d "
                            "(truncated)" % (path, "x".join(map(str, dims)), n_bytes, len(data)))
        data += chunk
    if f.read(1):
        raise DataError("%s: more data than its header (%s) describes" % (
            path, "x".join(map(str, dims))))
    return data


def load_idx_pair(images_path, labels_path, n_classes=10, side=28):
    """(images uint8 [N, side, side], labels int32 [N]) from one IDX image and label file."""
    x = read_idx(images_path, IMAGES_MAGIC)
    y = read_idx(labels_path, LABELS_MAGIC)
    if x.shape[1:] != (side, side):
        raise DataError("%s: images are %dx%d, expected %dx%d" % (
            images_path, x.shape[1], x.shape[2], side, side))
    if len(x) != len(y):
        raise DataError("%s has %d images but %s has %d labels" % (
            images_path, len(x), labels_path, len(y)))
    if len(y) and y.max() >= n_classes:
        raise DataError("%s: label %d out of range 0..%d" % (labels_path, y.max(), n_classes - 1))
    return x, y.astype(np.int32)
