"""Run logs (JSON lines, as openai/glow's utils.ResultLogger), epoch progress, image grids, atomic file writes and
the one check of a value against its choices."""
import io
import json
import math
import numbers
import os
import time

import numpy as np


def check_choice(what, value, choices):
    """`value` if it is one of `choices`, else a ValueError naming it and them."""
    if value not in choices:
        raise ValueError("%s %r: expected one of %s" % (what, value, ", ".join(map(str, choices))))
    return value


def _jsonable(value, where):
    """`value` with NumPy values as Python ones and NaN/inf as the strings "NaN", "Infinity", "-Infinity"
    (float() parses them back): JSON has none, and a diverging run must still log valid JSON that says which
    it was. Anything else raises TypeError naming `where`."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):  # int and np.integer
        return int(value)
    if isinstance(value, numbers.Real):  # float and np.floating
        value = float(value)
        return value if math.isfinite(value) else json.dumps(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            k = k.item() if isinstance(k, np.generic) else k
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError("%s: key %r of type %s cannot be a JSON key" % (where, k, type(k).__name__))
            out[k] = _jsonable(v, "%s[%r]" % (where, k))
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, "%s[%d]" % (where, i)) for i, v in enumerate(value)]
    raise TypeError("%s: %r of type %s is not JSON-serialisable; pass a number, string, "
                    "bool, None, list, dict or NumPy value" % (where, value, type(value).__name__))


def dumps_strict(obj, where="value", **kwargs):
    """json.dumps of `obj` as _jsonable makes it: never the non-standard NaN/Infinity."""
    return json.dumps(_jsonable(obj, where), allow_nan=False, **kwargs)


class ResultLogger(object):
    """Append-only JSON-lines log: the config first, then one line per `log` call, each flushed and fsync'ed
    (a crash loses at most the line being written). Reopening a non-empty file (a resumed run) keeps its lines
    and appends the config again with "resumed": true, so each stretch says which config wrote it."""

    def __init__(self, path, config):
        if not isinstance(config, dict):
            raise TypeError("ResultLogger(%r): config must be a dict, got %s" % (path, type(config).__name__))
        if "resumed" in config:
            raise ValueError("ResultLogger(%r): config has a 'resumed' key, which the logger writes itself" % (path,))
        self.path, header, torn = path, dict(config), False
        self._torn = False  # a write failed part-way: the next starts on a new line
        if os.path.exists(path) and os.path.getsize(path) > 0:
            header = dict([("resumed", True)] + list(config.items()))
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                # A crash mid-line left no newline: end it, so ours stay whole (read_jsonl skip_invalid skips it).
                torn = f.read(1) != b"\n"
        self.repaired = torn  # the file ended in a line torn by a crash (it stays, as a line readers skip)
        self._file = open(path, "a")
        self._write(("\n" if torn else "") + dumps_strict(header, "config") + "\n")

    def _write(self, text):
        try:
            self._file.write(("\n" if self._torn else "") + text)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._torn = False
        except OSError:
            self._torn = True  # (a full disk): part of the line may be in the file
            raise

    def log(self, **kwargs):
        if self._file is None:
            raise ValueError("ResultLogger(%r) is closed" % (self.path,))
        self._write(dumps_strict(kwargs, "log") + "\n")

    def close(self):
        """Close the file; further calls do nothing."""
        if self._file is not None:
            f, self._file = self._file, None
            f.close()


def read_jsonl(path, skip_invalid=False, skipped=None):
    """The JSON objects of a JSON-lines file, in order, blank lines ignored; the NaN/Infinity that json.dumps
    (and openai/glow's logger) write by default are accepted. A line that is not a JSON object raises
    ValueError naming path and line, unless skip_invalid (a line torn by a crash): then "path:line: why" is
    appended to the list `skipped`."""
    out = []
    with open(path, "r") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                error = None if isinstance(obj, dict) else "expected a JSON object, got %s" % type(obj).__name__
            except ValueError as e:
                error = "not valid JSON (%s): %r" % (e, line[:200])
            if error is None:
                out.append(obj)
            elif not skip_invalid:
                raise ValueError("%s:%d: %s" % (path, n, error))
            elif skipped is not None:
                skipped.append("%s:%d: %s" % (path, n, error))
    return out


class Progress(object):
    """Progress within an epoch, to `stream` (None: nowhere): on a terminal a tqdm bar (step/total, images/s, the
    running bits/dim, ETA); elsewhere (a log, ModelArts) a line every `every_seconds` (0: none), no carriage return.
    update(done, bits): `done` of `total` steps (`initial` before this), bits/dim of the last (None: not applied)."""

    def __init__(self, total, desc, images_per_step, stream, every_seconds=60.0, initial=0, clock=time.time):
        self.total, self.desc, self.images_per_step, self.initial = total, desc, images_per_step, initial
        self.every, self.stream, self.clock, self.bar = every_seconds, stream, clock, None
        self.t0 = self.last = clock()
        self.sum_bits, self.n_bits = 0.0, 0
        if stream is not None and stream.isatty():
            import tqdm  # only a terminal needs it
            self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", file=stream, leave=False)

    def update(self, done, bits=None):
        if bits is not None:
            self.sum_bits, self.n_bits = self.sum_bits + float(bits), self.n_bits + 1
        now, mean = self.clock(), self.sum_bits / self.n_bits if self.n_bits else float("nan")
        rate = (done - self.initial) / max(now - self.t0, 1e-9)  # steps/s
        text = "images/s %.1f  bits/dim %.4f" % (rate * self.images_per_step, mean)
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(done - self.bar.n)
        elif self.stream is not None and self.every and now - self.last >= self.every:
            self.last, eta = now, int((self.total - done) / rate) if rate > 0 else 0
            print("%s step %d/%d (%d%%)  %s  eta %d:%02d:%02d" % (self.desc, done, self.total, 100 * done // self.total,
                  text, eta // 3600, eta // 60 % 60, eta % 60), file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def atomic_write_bytes(path, data):
    """Write `data` to `path` so readers see the old file or the new, never half: via an fsync'ed
    temporary file in the same folder (os.replace is atomic only within one file system). On an
    error `path` is untouched, the temporary file removed, and the error raised."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = os.path.join(folder, ".%s.%d.%s.tmp" % (base, os.getpid(), os.urandom(4).hex()))
    # Mode 0o666 lets the umask decide, as open(path, 'wb') does (tempfile's files are owner-only).
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


def image_grid(images, n_cols=None):
    """Tile uint8 images [N, H, W, C] into one [rows*H, n_cols*W, C] array, n_cols by default
    ceil(sqrt(N)) (nearest to square); cells past N are black."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        got = "%s with shape %s" % (images.dtype, images.shape) if hasattr(images, "dtype") else type(images).__name__
        raise ValueError("images: %s, expected a NumPy uint8 array [N, H, W, C] (from [-0.5, 0.5]: "
                         "np.clip((x + .5) * 256, 0, 255).astype(np.uint8))" % got)
    if images.ndim != 4 or images.shape[0] < 1 or images.shape[3] not in (1, 3):
        raise ValueError("images: shape %s, expected [N, H, W, C] with N >= 1 and C in {1, 3}" % (images.shape,))
    n, h, w, c = images.shape
    n_cols = int(math.ceil(math.sqrt(n))) if n_cols is None else n_cols
    if isinstance(n_cols, bool) or not isinstance(n_cols, numbers.Integral) or n_cols < 1:
        raise ValueError("n_cols=%r: must be a positive integer" % (n_cols,))
    n_rows = (n + n_cols - 1) // n_cols
    grid = np.zeros((n_rows * n_cols, h, w, c), np.uint8)
    grid[:n] = images
    grid = grid.reshape(n_rows, n_cols, h, w, c).transpose(0, 2, 1, 3, 4)  # [rows, H, cols, W, C]
    return grid.reshape(n_rows * h, n_cols * w, c)  # [rows*H, cols*W, C]


def image_summary(tag, png):
    """A TensorBoard image (tf.Summary.Value) of PNG bytes."""
    import tensorflow.compat.v1 as tf  # only --tensorboard needs TensorFlow here
    from PIL import Image
    with Image.open(io.BytesIO(png)) as image:
        width, height, channels = image.size[0], image.size[1], len(image.getbands())
    return tf.Summary.Value(tag=tag, image=tf.Summary.Image(height=height, width=width, colorspace=channels,
                                                            encoded_image_string=png))


def histogram_summary(tag, values, n_buckets=30):
    """A TensorBoard histogram (tf.Summary.Value) of the finite `values`, in n_buckets equal buckets."""
    import tensorflow.compat.v1 as tf
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    counts, edges = np.histogram(values, bins=n_buckets) if values.size else (np.zeros(0), np.zeros(1))
    return tf.Summary.Value(tag=tag, histo=tf.HistogramProto(
        min=float(values.min()) if values.size else 0.0, max=float(values.max()) if values.size else 0.0,
        num=float(values.size), sum=float(values.sum()), sum_squares=float(np.square(values).sum()),
        bucket_limit=[float(e) for e in edges[1:]], bucket=[float(c) for c in counts]))


def save_image_grid(images, path, n_cols=None):
    """Save uint8 images [N, H, W, C] (C in {1, 3}) as one PNG grid, atomically; returns the PNG's bytes."""
    from PIL import Image  # only the sampling step needs Pillow
    grid = image_grid(images, n_cols)
    buf = io.BytesIO()
    # uint8 [H, W] becomes mode "L", [H, W, 3] mode "RGB"
    Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return buf.getvalue()
