"""Format: CIFAR-10 (Krizhevsky 2009), the official python and binary versions.

python: a pickled dict per batch with 'data' uint8 [10000, 3072] (CHW rows) and 'labels'
  (10000 ints); the keys are bytes in the official (Python 2) files, str in a copy
  re-pickled by Python 3.  _Unpickler builds numpy arrays and plain containers, nothing else.
binary: records of 1 label byte + 3072 bytes CHW.
Archives are read in memory, never extracted; one holding a link, device, FIFO, absolute
or '..' name is refused, since no genuine data archive holds one.
"""
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from .common import DataError, downsample, pool_factor
from .sources import ArraySource

try:  # numpy >= 1.26 names the module numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct

BATCHES = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
PY_TAR, BIN_TAR = "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"
EXPECTED = "%s/{data_batch_1..5,test_batch} or %s/{data_batch_1..5,test_batch}.bin or %s or %s" % (
    PY_DIR, BIN_DIR, PY_TAR, BIN_TAR)
SEARCHED, CHANNELS = True, 3
_RECORD = 1 + 3 * 32 * 32


def find(folder):
    """(layout, path) of the first CIFAR-10 copy in folder, or None."""
    for layout, path, suffix in [("python", os.path.join(folder, PY_DIR), ""), ("python", folder, ""),
                                 ("binary", os.path.join(folder, BIN_DIR), ".bin"), ("binary", folder, ".bin")]:
        if all(os.path.isfile(os.path.join(path, b + suffix)) for b in BATCHES):
            return layout, path
    for layout, name in (("python-tar", PY_TAR), ("binary-tar", BIN_TAR)):
        if os.path.isfile(os.path.join(folder, name)):
            return layout, os.path.join(folder, name)
    return None


def lacks(folder):
    return "no CIFAR-10 batches or archive"


def load(problem, found, image_size, n_channels):
    factor = pool_factor(problem.native, image_size, "problem %s" % problem.name)
    layout, path = found
    binary = layout.startswith("binary")
    names = [b + (".bin" if binary else "") for b in BATCHES]
    if layout.endswith("-tar"):
        top = BIN_DIR if binary else PY_DIR
        members = _tar_members(path, ["%s/%s" % (top, n) for n in names])
        raws = [("%s:%s/%s" % (path, top, n), members["%s/%s" % (top, n)]) for n in names]
    else:
        raws = [(os.path.join(path, n), _read(os.path.join(path, n))) for n in names]
    parse = _parse_binary if binary else _parse_python
    parts = [parse(raw, name) for name, raw in raws]
    x_train, y_train = (np.concatenate(a) for a in zip(*parts[:5]))
    x_test, y_test = parts[5]
    return (ArraySource(downsample(x_train, factor), y_train),
            ArraySource(downsample(x_test, factor), y_test), problem.n_y)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class _Unpickler(pickle.Unpickler):
    """Builds only what a CIFAR-10 batch holds: dicts, lists, strings, ints, numpy arrays.

    The globals it resolves are numpy's array reconstruction and _codecs.encode, which
    Python 3's pickle protocol 2 calls to rebuild bytes (such as an array's data) from
    latin-1 text; here it is a function that does that and nothing else.  Any other
    global (os.system, builtins.eval, ...) is refused before it can be called.
    """

    def __init__(self, raw, name):
        super(_Unpickler, self).__init__(io.BytesIO(raw), encoding="bytes")
        self._name = name

    def find_class(self, module, name):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            return self._latin1_bytes
        raise DataError("%s: refused the pickle global %s.%s (a CIFAR-10 batch needs only numpy array "
                        "reconstruction); this is not a genuine CIFAR-10 batch" % (self._name, module, name))

    def _latin1_bytes(self, text, encoding):
        if not isinstance(text, str) or encoding != "latin1":
            raise DataError("%s: the pickle calls _codecs.encode on %s with %r; a CIFAR-10 batch "
                            "only turns text into bytes with 'latin1'" % (self._name, type(text).__name__, encoding))
        return text.encode("latin1")


def _parse_python(raw, name):
    """(x uint8 [N, 32, 32, 3], y int32 [N]) from the bytes of a python-version batch."""
    try:
        batch = _Unpickler(raw, name).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as exc:
        raise DataError("%s: not a readable CIFAR-10 python batch (%s)" % (name, exc)) from exc
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError("%s: expected a dict with 'data' and 'labels' (bytes or str keys)" % name)
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError("%s: 'data' must be uint8 [N, 3072], got %s %s" % (
            name, getattr(data, "dtype", type(data).__name__), getattr(data, "shape", "")))
    return _to_images(data, labels, name)


def _parse_binary(raw, name):
    """(x uint8 [N, 32, 32, 3], y int32 [N]) from the bytes of a binary-version batch."""
    if not raw or len(raw) % _RECORD:
        raise DataError("%s: %d bytes is not a whole number of %d-byte CIFAR-10 records" % (name, len(raw), _RECORD))
    records = np.frombuffer(raw, np.uint8).reshape(-1, _RECORD)  # [N, 1 + 3072]
    return _to_images(records[:, 1:], records[:, 0], name)


def _to_images(data, labels, name):
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError("%s: %d images but %d labels" % (name, len(data), labels.size))
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError("%s: labels must be 0..9, found %d..%d" % (name, labels.min(), labels.max()))
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return np.ascontiguousarray(x), labels.astype(np.int32)


def _tar_members(path, wanted):
    """{name: bytes} of the `wanted` members of the tar (.gz) at path, all members checked (see above)."""
    wanted, found = set(wanted), {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                parts = name.replace("\\", "/").split("/")
                if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                    raise DataError("%s: refusing archive member %r (absolute or '..' path)" % (path, member.name))
                if not (member.isfile() or member.isdir()):
                    raise DataError("%s: refusing archive member %r (links, devices and FIFOs are not allowed)"
                                    % (path, member.name))
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError("%s: cannot read the archive (%s): it is damaged or truncated; delete it and fetch it "
                        "again" % (path, exc)) from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError("%s: archive lacks %s" % (path, ", ".join(missing)))
    return found
