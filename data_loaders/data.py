"""Data: one rank's view of a problem's train and test splits, as uint8 batches prepared a few
ahead by a background thread (closing a batch generator early stops it)."""
import itertools
import queue
import threading

import numpy as np

from .augment import augment
from .common import DataError, check_int

# Tags that give each random stream its own RandomState seed.
_ORDER, _SHUFFLE, _AUGMENT, _INIT_ORDER, _INIT_SHUFFLE, _INIT_AUGMENT = range(6)
_WINDOW_BYTES = 1 << 28  # a lazily read training set is shuffled in windows of about this size
THREAD_NAME = "glow-data-prefetch"


def _rng(*keys):
    return np.random.RandomState([int(k) for k in keys])


class Data(object):
    """A problem's data for rank `rank` of `size` (see get_data).  n_y: classes (1 if unlabeled);
    image_shape: (H, W, C) of the batches; n_train, n_test: sizes of the whole splits;
    augmentation: the Augmentation of training batches, or None; location: the files' folder."""

    def __init__(self, problem, train, test, n_y, image_shape, augmentation, seed, rank, size, location):
        self.problem, self.n_y, self.image_shape, self.location = problem, n_y, tuple(image_shape), location
        self._train, self._test, self.n_train, self.n_test = train, test, train.n, test.n
        self.augmentation, self.seed, self.rank, self.size = augmentation, seed, rank, size

    def test_range(self):
        """(start, stop): this rank's contiguous share of the test split."""
        return self.rank * self.n_test // self.size, (self.rank + 1) * self.n_test // self.size

    def train_stream(self, batch_size, first, count):
        """Yield `count` batches (x uint8 [B, H, W, C], y int32 [B]) of this rank's endless stream: passes 1, 2,
        3, ... over its share of the training set, each shuffled from (seed, pass) and augmented, end to end, from
        its batch `first` (0-based) on. A stretch is the same whatever came before, so a resumed run gets the
        batches it would have got. openai/glow's epoch (--n_train images) is such a stretch, not a pass."""
        per_pass = self._steps_per_pass(batch_size)
        n_pass, skip = divmod(check_int(first, "first", 0), per_pass)
        count = check_int(count, "count", 0)

        def produce():
            passes = (self._pass(batch_size, p, skip if p == n_pass + 1 else 0) for p in itertools.count(n_pass + 1))
            yield from itertools.islice(itertools.chain.from_iterable(passes), count)

        return prefetched(produce)

    def _steps_per_pass(self, batch_size):
        """Full batches per pass over this rank's share, the same on every rank; DataError if none."""
        n_steps = (self.n_train // self.size) // check_int(batch_size, "batch_size", 1)
        if n_steps == 0:
            raise DataError("batch_size %d: larger than this rank's share of the training set (%d images = "
                            "n_train %d / %d ranks)" % (batch_size, self.n_train // self.size, self.n_train, self.size))
        return n_steps

    def _pass(self, batch_size, n_pass, skip):
        """Pass n_pass's batches but the first `skip`, which are not augmented: each batch's
        augmentation has its own random stream, from (seed, pass, rank, batch)."""
        start = self.rank * (self.n_train // self.size)
        stop = start + self._steps_per_pass(batch_size) * batch_size
        order, rng = _rng(self.seed, n_pass, _ORDER), _rng(self.seed, n_pass, self.rank, _SHUFFLE)
        window = max(4 * batch_size, _WINDOW_BYTES // int(np.prod(self.image_shape)))
        for i, (x, y) in enumerate(self._train.shuffled(order, start, stop, batch_size, rng, window)):
            if i >= skip:
                yield self._finish(x, y, _rng(self.seed, n_pass, self.rank, _AUGMENT, i))

    def test_batches(self, batch_size):
        """Yield (x, y) over this rank's share of the test set once, in order, not augmented;
        the last batch may be smaller.  The ranks' shares are disjoint and cover the set."""
        batch_size = check_int(batch_size, "batch_size", 1)
        start, stop = self.test_range()
        return prefetched(lambda: (self._finish(x, y, None) for x, y in self._test.ordered(start, stop, batch_size)))

    def init_batch(self, n):
        """(x, y): n training images, augmented, for data-dependent init; fixed by seed and rank."""
        n = check_int(n, "init batch size", 1)
        if n > self.n_train:
            raise DataError("init batch size %d (train.py's --n_batch_init at its image size): the training set "
                            "has only %d images" % (n, self.n_train))
        order, rng = _rng(self.seed, self.rank, _INIT_ORDER), _rng(self.seed, self.rank, _INIT_SHUFFLE)
        x, y = next(iter(self._train.shuffled(order, 0, n, n, rng, n)))
        return self._finish(x, y, _rng(self.seed, self.rank, _INIT_AUGMENT))

    def _finish(self, x, y, aug_rng):
        """Copy, augment (with aug_rng) and tile to the output channels."""
        x = np.array(x, np.uint8)
        if aug_rng is not None and self.augmentation is not None:
            x = augment(x, self.augmentation, aug_rng)
        if x.shape[-1] != self.image_shape[-1]:
            x = np.repeat(x, self.image_shape[-1], axis=-1)  # grey [B, H, W, 1] -> [B, H, W, 3]
        return x, np.asarray(y, np.int32)


def prefetched(produce, depth=2):
    """Yield the items of the generator produce(), made by a worker thread at most `depth` ahead.
    An exception in the worker is re-raised here.  Closing this generator early (or dropping it)
    stops the worker, which is joined before close() returns."""
    items, slots, stop = queue.Queue(), threading.Semaphore(depth), threading.Event()

    def work():  # puts (False, item) per item, then (True, None), or (True, exc) on an exception
        source = produce()
        try:
            for item in source:
                slots.acquire()  # waits while `depth` items wait for the consumer
                if stop.is_set():
                    return
                items.put((False, item))
            items.put((True, None))
        except Exception as exc:  # handed over to the consumer, which re-raises it
            items.put((True, exc))
        finally:
            source.close()

    worker = threading.Thread(target=work, name=THREAD_NAME, daemon=True)  # never keeps Python alive
    worker.start()
    try:
        done, value = items.get()
        while not done:
            slots.release()
            yield value
            done, value = items.get()
        if value is not None:
            raise value
    finally:
        stop.set()
        slots.release()  # wakes a worker waiting for a slot, to see `stop`
        worker.join()
