"""Run logs (JSON lines), image grids and atomic file writes.

The log follows openai/glow's utils.ResultLogger: one JSON object a line,
the config first. Two changes make it safe for long, interrupted runs:
the file is opened for appending (a resumed run adds to its log instead of
erasing it), and every line is flushed and fsync'ed (a crash loses at most
the line being written).
"""
import io
import json
import math
import numbers
import os

import numpy as np

# JSON has no NaN or infinity. A diverging run must still log valid JSON, and
# which non-finite value it was matters when debugging, so they are written as
# these strings (float() parses all three back).
NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _float(x):
    x = float(x)
    if math.isnan(x):
        return NONFINITE["nan"]
    if math.isinf(x):
        return NONFINITE["inf"] if x > 0 else NONFINITE["-inf"]
    return x


def to_jsonable(value, where="value"):
    """`value` with NumPy scalars/arrays as Python numbers/lists and NaN/inf as strings.

    Raises TypeError naming `where` for anything else JSON cannot hold, rather
    than logging its repr.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):  # int and np.integer
        return int(value)
    if isinstance(value, numbers.Real):  # float and np.floating
        return _float(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, np.generic):
                k = k.item()
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError("%s: key %r of type %s cannot be a JSON key"
                                % (where, k, type(k).__name__))
            out[k] = to_jsonable(v, "%s[%r]" % (where, k))
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, "%s[%d]" % (where, i)) for i, v in enumerate(value)]
    raise TypeError("%s: %r of type %s is not JSON-serialisable; pass a number, string, "
                    "bool, None, list, dict or NumPy value" % (where, value, type(value).__name__))


def dumps_strict(obj, where="value", **kwargs):
    """json.dumps of to_jsonable(obj); never emits the non-standard NaN/Infinity."""
    return json.dumps(to_jsonable(obj, where), allow_nan=False, **kwargs)


class ResultLogger(object):
    """Append-only JSON-lines log: the config first, then one line per `log` call.

    A new (or empty) file starts with the config. Reopening an existing file
    (a resumed run) keeps every old line and appends the config again with
    "resumed": true, so each stretch of the log says which config wrote it.
    """

    def __init__(self, path, config):
        if not isinstance(config, dict):
            raise TypeError("ResultLogger(%r): config must be a dict, got %s"
                            % (path, type(config).__name__))
        if "resumed" in config:
            raise ValueError("ResultLogger(%r): config has a 'resumed' key, which the "
                             "logger writes itself" % (path,))
        self.path = path
        self._file = None
        header = dict(config)
        torn = False
        if os.path.exists(path) and os.path.getsize(path) > 0:
            header = dict([("resumed", True)] + list(config.items()))
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                # A crash mid-line left no newline: end it here, so our lines
                # stay whole. read_jsonl(skip_invalid=True) passes over it.
                torn = f.read(1) != b"\n"
        line = dumps_strict(header, "config") + "\n"
        self._file = open(path, "a")
        self._write(("\n" if torn else "") + line)

    def _write(self, text):
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def log(self, **kwargs):
        """Write one line with the given fields, and make it durable."""
        if self._file is None:
            raise ValueError("ResultLogger(%r) is closed" % (self.path,))
        self._write(dumps_strict(kwargs, "log") + "\n")

    def close(self):
        """Close the file; further calls do nothing."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def read_jsonl(path, skip_invalid=False):
    """The JSON objects of a JSON-lines file, in order; blank lines ignored.

    Lenient in what it reads: the NaN/Infinity literals that json.dumps (and
    openai/glow's logger) write by default are accepted. A line that is not a
    JSON object raises ValueError naming path and line number, unless
    skip_invalid (e.g. a line torn by a crash in a resumed run's log).
    """
    out = []
    with open(path, "r") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                if skip_invalid:
                    continue
                raise ValueError("%s:%d: not valid JSON (%s): %r"
                                 % (path, n, e, line[:200])) from e
            if not isinstance(obj, dict):
                if skip_invalid:
                    continue
                raise ValueError("%s:%d: expected a JSON object, got %s"
                                 % (path, n, type(obj).__name__))
            out.append(obj)
    return out


def atomic_write_bytes(path, data):
    """Write `data` to `path` so readers see the old file or the new, never half.

    The bytes go to a temporary file in the same folder (os.replace is atomic
    only within one file system), are fsync'ed, and the temporary file is
    renamed over `path`. On any error the temporary file is removed, `path`
    is untouched, and the error propagates.
    """
    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, ".%s.%d.%s.tmp" % (base, os.getpid(), os.urandom(4).hex()))
    # os.open with 0o666 lets the umask decide the mode, like open(path, 'wb')
    # (tempfile would leave the result readable by its owner only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, obj):
    """Atomically write `obj` as indented strict JSON (NaN/inf as strings)."""
    atomic_write_bytes(path, (dumps_strict(obj, path, indent=2, sort_keys=True) + "\n")
                       .encode("utf-8"))


def image_grid(images, n_cols=None):
    """Tile uint8 images [N, H, W, C] into one [rows*H, n_cols*W, C] array.

    n_cols defaults to ceil(sqrt(N)), the nearest to square; cells past N
    are black.
    """
    if not isinstance(images, np.ndarray):
        raise ValueError("images: expected a NumPy uint8 array [N, H, W, C], got %s"
                         % type(images).__name__)
    if images.dtype != np.uint8:
        raise ValueError("images: dtype %s with shape %s, expected uint8 (convert from "
                         "[-0.5, 0.5] with e.g. np.clip((x + .5) * 256, 0, 255).astype(np.uint8))"
                         % (images.dtype, images.shape))
    if images.ndim != 4 or images.shape[0] < 1 or images.shape[3] not in (1, 3):
        raise ValueError("images: shape %s, expected [N, H, W, C] with N >= 1 and C in {1, 3}"
                         % (images.shape,))
    n, h, w, c = images.shape
    if n_cols is None:
        n_cols = int(math.ceil(math.sqrt(n)))
    if isinstance(n_cols, bool) or not isinstance(n_cols, numbers.Integral) or n_cols < 1:
        raise ValueError("n_cols=%r: must be a positive integer" % (n_cols,))
    n_cols = int(n_cols)
    n_rows = (n + n_cols - 1) // n_cols
    grid = np.zeros((n_rows * n_cols, h, w, c), np.uint8)
    grid[:n] = images
    grid = grid.reshape(n_rows, n_cols, h, w, c).transpose(0, 2, 1, 3, 4)  # [rows, H, cols, W, C]
    return grid.reshape(n_rows * h, n_cols * w, c)  # [rows*H, cols*W, C]


def save_image_grid(images, path, n_cols=None):
    """Save uint8 images [N, H, W, C] (C in {1, 3}) as one PNG grid, atomically."""
    from PIL import Image  # only the sampling step needs Pillow

    grid = image_grid(images, n_cols)
    # uint8 [H, W] becomes mode "L", [H, W, 3] mode "RGB"
    img = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
