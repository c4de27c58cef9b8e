"""Where a split's images come from: arrays in memory, or parts (files) read on demand.

Both give the same two walks over positions start..stop-1 of the split:
  shuffled(): this epoch's order, full batches only;
  ordered():  file order, the last batch may be smaller.
"""
import numpy as np


class ArraySource(object):
    """x uint8 [N, H, W, C] and y int32 [N] held in memory."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.n = len(x)

    def head(self, n):
        return ArraySource(self.x[:n], self.y[:n])

    def shuffled(self, order_rng, start, stop, batch_size, rng, window):
        """Full batches of positions start..stop-1 of a permutation of the whole split."""
        mine = order_rng.permutation(self.n)[start:stop]
        for b in range(0, len(mine) - batch_size + 1, batch_size):
            idx = mine[b:b + batch_size]
            yield self.x[idx], self.y[idx]

    def ordered(self, start, stop, batch_size):
        for b in range(start, stop, batch_size):
            yield self.x[b:min(b + batch_size, stop)], self.y[b:min(b + batch_size, stop)]


class PartsSource(object):
    """A split stored in parts: counts[i] images in part i, read(i, lo, hi, rng) -> (x, y).

    The split is the first n images in part order.  An epoch visits the parts
    in a shuffled order; a rank reads its contiguous share of that stream
    (whole files, plus at most two partial ones) and shuffles within windows
    of about `window` images, as openai/glow shuffled files, then a buffer.
    """

    def __init__(self, counts, read, n=None):
        self.counts, self.read = list(counts), read
        self.n = sum(self.counts) if n is None else n

    def head(self, n):
        return PartsSource(self.counts, self.read, n)

    def _limited_counts(self):
        ends = np.minimum(np.cumsum(self.counts), self.n)
        return list(np.diff(np.concatenate([[0], ends])).astype(int))

    def shuffled(self, order_rng, start, stop, batch_size, rng, window):
        counts = self._limited_counts()
        pieces = _pieces(counts, order_rng.permutation(len(counts)), start, stop)
        chunks = (self.read(part, lo, hi, rng) for part, lo, hi in pieces)
        return _batches(chunks, batch_size, rng, window)

    def ordered(self, start, stop, batch_size):
        counts = self._limited_counts()
        pieces = _pieces(counts, range(len(counts)), start, stop)
        chunks = (self.read(part, lo, hi, None) for part, lo, hi in pieces)
        return _batches(chunks, batch_size, None, 0)


def _pieces(counts, order, start, stop):
    """(part, lo, hi) ranges covering positions start..stop-1 of the parts laid end to end."""
    pieces, offset = [], 0
    for part in order:
        lo, hi = max(start - offset, 0), min(stop - offset, counts[part])
        if lo < hi:
            pieces.append((int(part), int(lo), int(hi)))
        offset += counts[part]
    return pieces


def _batches(chunks, batch_size, rng, window):
    """Batches of batch_size from a stream of (x, y) chunks.  With rng: full batches only,
    shuffled ~window images at a time, the final remainder dropped.  Without: in order,
    the last batch may be smaller."""
    xs, ys = [], []
    for x, y in chunks:
        xs.append(x)
        ys.append(y)
        if sum(len(c) for c in xs) >= window:
            batches, xs, ys = _full_batches(xs, ys, batch_size, rng)
            yield from batches
    batches, xs, ys = _full_batches(xs, ys, batch_size, rng)
    yield from batches
    if rng is None and xs and len(xs[0]):
        yield xs[0], ys[0]


def _full_batches(xs, ys, batch_size, rng):
    """(full batches of the chunks, permuted first if rng is given; [leftover x]; [leftover y])."""
    if not xs:
        return [], [], []
    x, y = np.concatenate(xs), np.concatenate(ys)
    if rng is not None:
        perm = rng.permutation(len(x))
        x, y = x[perm], y[perm]
    n_full = len(x) - len(x) % batch_size
    batches = [(x[b:b + batch_size], y[b:b + batch_size]) for b in range(0, n_full, batch_size)]
    return batches, [x[n_full:]], [y[n_full:]]
