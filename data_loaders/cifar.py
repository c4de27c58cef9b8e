"""Format: CIFAR-10 (Krizhevsky 2009), the official python and binary versions.

python: a pickled dict per batch, 'data' uint8 [10000, 3072] (CHW rows) and 'labels' (ints), bytes
  keys in the official (Python 2) files, str in a Python 3 re-pickle; read by _Unpickler.
binary: records of 1 label byte + 3072 bytes CHW.
Archives are read in memory, never extracted; one holding a link, device, FIFO, absolute or '..'
name is refused, since no genuine data archive holds one.
"""
import io
import os
import pathlib
import pickle
import tarfile
import zlib

import numpy as np

from .common import ArraySource, DataError, pool_factor

BATCHES = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
PY_TAR, BIN_TAR = "cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"
EXPECTED = "%s/{data_batch_1..5,test_batch} or %s/{data_batch_1..5,test_batch}.bin or %s or %s" % (
    PY_DIR, BIN_DIR, PY_TAR, BIN_TAR)
SEARCHED, CHANNELS = True, 3
_RECORD = 1 + 3 * 32 * 32
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array unpickler, in numpy(._)core.multiarray


def find(folder):
    """(binary?, folder or archive, archive?) of the first CIFAR-10 copy in folder, or None."""
    layouts = [(False, os.path.join(folder, PY_DIR), False), (False, folder, False),
               (True, os.path.join(folder, BIN_DIR), False), (True, folder, False),
               (False, os.path.join(folder, PY_TAR), True), (True, os.path.join(folder, BIN_TAR), True)]
    for binary, path, packed in layouts:
        files = [path] if packed else [os.path.join(path, b + (".bin" if binary else "")) for b in BATCHES]
        if all(os.path.isfile(f) for f in files):
            return binary, path, packed
    return None


def lacks(folder):
    return "no CIFAR-10 batches or archive"


def load(problem, found, image_size, n_channels):
    factor = pool_factor(problem.native, image_size, "problem %s" % problem.name)
    binary, path, packed = found
    names = [b + (".bin" if binary else "") for b in BATCHES]
    if packed:
        names = ["%s/%s" % (BIN_DIR if binary else PY_DIR, n) for n in names]
        members = _tar_members(path, names)
        raws = [("%s:%s" % (path, n), members[n]) for n in names]
    else:
        raws = [(os.path.join(path, n), pathlib.Path(path, n).read_bytes()) for n in names]
    parts = [_parse(raw, name, binary) for name, raw in raws]
    x_train, y_train = (np.concatenate(a) for a in zip(*parts[:5]))
    return ArraySource(x_train, y_train, factor), ArraySource(*parts[5], factor), problem.n_y


class _Unpickler(pickle.Unpickler):
    """Builds only what a CIFAR-10 batch holds: dicts, lists, strings, ints, numpy arrays.

    Besides numpy's array reconstruction it resolves _codecs.encode, which Python 3's pickle
    protocol 2 calls to rebuild bytes (such as an array's data) from latin-1 text, as a function
    that does that and nothing else.  Any other global (os.system, eval, ...) is refused uncalled.
    """

    def __init__(self, raw, name):
        super(_Unpickler, self).__init__(io.BytesIO(raw), encoding="bytes")
        self._name = name

    def find_class(self, module, name):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _RECONSTRUCT
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


def _parse(raw, name, binary):
    """(x uint8 [N, 32, 32, 3], y int32 [N]) from the bytes of one batch."""
    if binary:
        if not raw or len(raw) % _RECORD:
            raise DataError("%s: %d bytes is not a whole number of %d-byte CIFAR-10 records" % (
                name, len(raw), _RECORD))
        records = np.frombuffer(raw, np.uint8).reshape(-1, _RECORD)  # [N, 1 + 3072]
        data, labels = records[:, 1:], records[:, 0]
    else:
        data, labels = _unpickle(raw, name)
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError("%s: %d images but %d labels" % (name, len(data), labels.size))
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError("%s: labels must be 0..9, found %d..%d" % (name, labels.min(), labels.max()))
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return np.ascontiguousarray(x), labels.astype(np.int32)


def _unpickle(raw, name):
    """(data uint8 [N, 3072], labels [N]) of a python-version batch."""
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
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError("%s: 'data' must be uint8 [N, 3072], got %s %s" % (
            name, getattr(data, "dtype", type(data).__name__), getattr(data, "shape", "")))
    return data, np.asarray(batch["labels"])


def _tar_members(path, wanted):
    """{name: bytes} of the `wanted` members of the tar (.gz) at path; every member is checked."""
    found = {}
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
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DataError("%s: archive lacks %s" % (path, ", ".join(missing)))
    return found
