"""What the formats share: the one exception, argument checks, average pooling of uint8 images
[N, H, W, C], and the two sources of a split a format's load returns (n images, head(n),
shuffled(...): full batches in this pass's order, ordered(...): in stored order)."""
import numpy as np


class DataError(ValueError):
    """A data set is missing, malformed, unsafe, or asked for with bad arguments; the message
    names the bad value or file and what would be accepted, for train.py to print as is."""


def check_int(value, what, low):
    """int(value), or DataError unless value is an integer (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError("%s %r: must be an integer >= %d" % (what, value, low))
    return int(value)


def pool_factor(native, image_size, what):
    """The power-of-two factor that average-pools `native` px images of `what` to image_size."""
    if image_size > native:
        raise DataError("image_size %d: larger than the %d px images of %s; use %d or a smaller power of two" % (
            image_size, native, what, native))
    factor = native // image_size
    if native % image_size or factor & (factor - 1):
        raise DataError("image_size %d: the %d px images of %s can only be downsampled by a power of two (e.g. "
                        "%d)" % (image_size, native, what, native // 2))
    return factor


def downsample(x, factor):
    """uint8 x [N, H, W, C] average-pooled by `factor`; the block mean is floored, as openai/glow's
    downsample + x_to_uint8 did, exactly (integer sums, no round-off)."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    blocks = x.reshape(n, h // factor, factor, w // factor, factor, c)  # [N, H/f, f, W/f, f, C]
    return (blocks.sum(axis=(2, 4), dtype=np.int64) // (factor * factor)).astype(np.uint8)  # [N, H/f, W/f, C]


class ArraySource(object):
    """A split held in memory: x uint8 [N, H, W, C], y int32 [N]; x of a format's load is as stored, and its
    head(n) average-pools it by `factor` (only the n images taken: get_data takes a head of every split)."""

    def __init__(self, x, y, factor=1):
        self.x, self.y, self.n, self.factor = x, y, len(x), factor

    def head(self, n):
        return ArraySource(downsample(self.x[:n], self.factor), self.y[:n])

    def shuffled(self, order_rng, start, stop, batch_size, rng, window):
        """Full batches of positions start..stop-1 of a permutation of the whole split."""
        mine = order_rng.permutation(self.n)[start:stop]
        for b in range(0, len(mine) - batch_size + 1, batch_size):
            yield self.x[mine[b:b + batch_size]], self.y[mine[b:b + batch_size]]

    def ordered(self, start, stop, batch_size):
        for b in range(start, stop, batch_size):
            yield self.x[b:min(b + batch_size, stop)], self.y[b:min(b + batch_size, stop)]


class PartsSource(object):
    """A split stored in parts (files) read on demand: the first n images of counts[i] images
    in part i, read(i, lo, hi, rng) -> (x, y) of its images lo..hi-1.  A pass visits the parts
    in a shuffled order; a rank reads its contiguous share of that stream (whole files plus at
    most two partial ones) and shuffles it in windows of about `window` images, as openai/glow
    shuffled files, then a buffer."""

    def __init__(self, counts, read, n=None):
        self.counts, self.read = list(counts), read
        self.n = sum(self.counts) if n is None else n

    def head(self, n):
        return PartsSource(self.counts, self.read, n)

    def shuffled(self, order_rng, start, stop, batch_size, rng, window):
        return self._batches(order_rng.permutation(len(self.counts)), start, stop, batch_size, rng, window)

    def ordered(self, start, stop, batch_size):
        return self._batches(range(len(self.counts)), start, stop, batch_size, None, 0)

    def _batches(self, order, start, stop, batch_size, rng, window):
        """Batches of positions start..stop-1 of the parts laid end to end in `order`.  With rng:
        full batches only, shuffled ~window images at a time; without: in order, the last smaller."""
        counts = np.diff(np.minimum(np.cumsum([0] + self.counts), self.n))  # of the first n images
        chunks, offset = [], 0
        for part in order:
            lo, hi = max(start - offset, 0), min(stop - offset, counts[part])
            offset += counts[part]
            if lo < hi:
                chunks.append(self.read(int(part), int(lo), int(hi), rng))
                if sum(len(x) for x, _ in chunks) >= window:
                    batches, chunks = _full_batches(chunks, batch_size, rng)
                    yield from batches
        if chunks:
            batches, chunks = _full_batches(chunks, batch_size, rng)
            yield from batches
            if rng is None and len(chunks[0][0]):
                yield chunks[0]


def _full_batches(chunks, batch_size, rng):
    """(the full batches of the (x, y) chunks joined, permuted first if rng is given; [the rest])."""
    x, y = (np.concatenate(a) for a in zip(*chunks))
    if rng is not None:
        perm = rng.permutation(len(x))
        x, y = x[perm], y[perm]
    n = len(x) - len(x) % batch_size
    return [(x[b:b + batch_size], y[b:b + batch_size]) for b in range(0, n, batch_size)], [(x[n:], y[n:])]
