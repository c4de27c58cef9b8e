"""CIFAR-10 (Krizhevsky 2009): the official python and binary versions.

python: cifar-10-python.tar.gz or its folder cifar-10-batches-py/ with
  data_batch_1..5 and test_batch, each a (Python 2) pickle of a dict with
  b'data' uint8 [10000, 3072] (CHW rows) and b'labels' (10000 ints).  The
  pickles are read with an unpickler that builds nothing but numpy arrays.
binary: cifar-10-binary.tar.gz or cifar-10-batches-bin/ with
  data_batch_1..5.bin and test_batch.bin, records of 1 label byte + 3072
  bytes CHW.  Archives are read in memory, never extracted.
"""
import io
import os
import pickle

import numpy as np

from . import safe_tar
from .errors import DataError

BATCHES = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
PY_TAR, BIN_TAR = "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"
EXPECTED = ["%s/{data_batch_1..5,test_batch}" % PY_DIR, "%s/{data_batch_1..5,test_batch}.bin" % BIN_DIR,
            PY_TAR, BIN_TAR]
_RECORD = 1 + 3 * 32 * 32


def _reconstruct():
    try:  # numpy >= 2 (and 1.26) name the module numpy._core
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: numpy arrays, dicts, lists, strings, ints."""

    def __init__(self, stream, name):
        super(_BatchUnpickler, self).__init__(stream, encoding="bytes")
        self._name = name

    def find_class(self, module, name):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise DataError("%s: refused the pickle global %s.%s (a CIFAR-10 batch needs only numpy "
                        "array reconstruction); this is not a genuine CIFAR-10 batch"
                        % (self._name, module, name))

    def persistent_load(self, pid):
        raise DataError("%s: refused a persistent id in the pickle (not a CIFAR-10 batch)" % self._name)


def parse_python_batch(raw, name):
    """(x uint8 [N, 32, 32, 3], y int32 [N]) from the bytes of a python-version batch."""
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), name).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as exc:
        raise DataError("%s: not a readable CIFAR-10 python batch (%s)" % (name, exc)) from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError("%s: expected a dict with b'data' and b'labels'" % name)
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        raise DataError("%s: b'data' must be uint8 [N, 3072], got %s %s" % (
            name, getattr(data, "dtype", type(data).__name__), getattr(data, "shape", "")))
    return _to_images(data, labels, name)


def parse_binary_batch(raw, name):
    """(x uint8 [N, 32, 32, 3], y int32 [N]) from the bytes of a binary-version batch."""
    if not raw or len(raw) % _RECORD:
        raise DataError("%s: %d bytes is not a whole number of %d-byte CIFAR-10 records"
                        % (name, len(raw), _RECORD))
    records = np.frombuffer(raw, np.uint8).reshape(-1, _RECORD)  # [N, 1 + 3072]
    return _to_images(records[:, 1:], records[:, 0], name)


def _to_images(data, labels, name):
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError("%s: %d images but %d labels" % (name, len(data), labels.size))
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError("%s: labels must be 0..9, found %d..%d" % (name, labels.min(), labels.max()))
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return np.ascontiguousarray(x), labels.astype(np.int32)


def find(folder):
    """(layout, path) of the first CIFAR-10 copy in folder, or None."""
    candidates = [("python", os.path.join(folder, PY_DIR)), ("python", folder),
                  ("binary", os.path.join(folder, BIN_DIR)), ("binary", folder)]
    for layout, path in candidates:
        suffix = ".bin" if layout == "binary" else ""
        if all(os.path.isfile(os.path.join(path, b + suffix)) for b in BATCHES):
            return layout, path
    for layout, name in (("python-tar", PY_TAR), ("binary-tar", BIN_TAR)):
        if os.path.isfile(os.path.join(folder, name)):
            return layout, os.path.join(folder, name)
    return None


def load(found):
    """(x_train, y_train, x_test, y_test) from what find() returned."""
    layout, path = found
    binary = layout.startswith("binary")
    parse = parse_binary_batch if binary else parse_python_batch
    names = [b + (".bin" if binary else "") for b in BATCHES]
    if layout.endswith("-tar"):
        top = BIN_DIR if binary else PY_DIR
        members = safe_tar.read_members(path, ["%s/%s" % (top, n) for n in names])
        raws = [("%s:%s/%s" % (path, top, n), members["%s/%s" % (top, n)]) for n in names]
    else:
        raws = [(os.path.join(path, n), _read(os.path.join(path, n))) for n in names]
    parts = [parse(raw, name) for name, raw in raws]
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return x_train, y_train, parts[5][0], parts[5][1]


def _read(path):
    with open(path, "rb") as f:
        return f.read()
