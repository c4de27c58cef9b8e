"""Data: one rank's view of a problem's train and test splits, as uint8 batches."""
import numpy as np

from .augment import augment
from .common import DataError, check_int
from .prefetch import prefetched

# Tags that give each random stream its own RandomState seed.
_ORDER, _SHUFFLE, _AUGMENT, _INIT_ORDER, _INIT_SHUFFLE, _INIT_AUGMENT = range(6)
# A lazily read training set is shuffled within windows of about this many bytes.
_WINDOW_BYTES = 1 << 28


def _rng(*keys):
    return np.random.RandomState([int(k) for k in keys])


class Data(object):
    """A problem's data for rank `rank` of `size` (see get_data).

    n_y: classes (1 if unlabeled); image_shape: (H, W, C) of the batches;
    n_train, n_test: sizes of the full splits (all ranks together);
    augmentation: the Augmentation applied to training batches, or None;
    location: the folder the files came from.
    """

    def __init__(self, problem, train, test, n_y, image_shape, augmentation, seed, rank, size, location):
        self.problem, self.n_y, self.image_shape = problem, n_y, tuple(image_shape)
        self._train, self._test = train, test
        self.n_train, self.n_test = train.n, test.n
        self.augmentation, self.location = augmentation, location
        self.seed, self.rank, self.size = seed, rank, size

    def test_range(self):
        """(start, stop): this rank's contiguous share of the test split."""
        return self.rank * self.n_test // self.size, (self.rank + 1) * self.n_test // self.size

    def train_batches(self, batch_size, epoch):
        """Yield (x uint8 [B, H, W, C], y int32 [B]) full batches of one pass over this rank's
        share of the training set, pass number `epoch`: shuffled from (seed, epoch) and augmented;
        the remainder that does not fill a batch is dropped.  Batches are prepared by a
        background thread; closing the generator early stops it."""
        self._steps_per_pass(batch_size)
        epoch = check_int(epoch, "epoch", 0)
        return prefetched(lambda: self._pass(batch_size, epoch, 0))

    def train_stream(self, batch_size, first, count):
        """Yield `count` batches of this rank's endless stream of training batches, from its
        batch number `first` (0-based) on.  The stream is passes 1, 2, 3, ... over this rank's
        share, each as train_batches(batch_size, pass) yields it, end to end; so a stretch of
        it is the same whatever stretch came before (a resumed run gets the batches it would
        have got).  openai/glow's epoch (--n_train images) is such a stretch, not a pass."""
        per_pass = self._steps_per_pass(batch_size)
        first = check_int(first, "first", 0)
        count = check_int(count, "count", 0)

        def produce():
            n_pass, skip = divmod(first, per_pass)
            left = count
            while left > 0:
                n_pass += 1
                for batch in self._pass(batch_size, n_pass, skip):
                    yield batch
                    left -= 1
                    if left == 0:
                        return
                skip = 0

        return prefetched(produce)

    def _steps_per_pass(self, batch_size):
        """Full batches per pass over this rank's share, the same on every rank; DataError if none."""
        n_steps = (self.n_train // self.size) // check_int(batch_size, "batch_size", 1)
        if n_steps == 0:
            raise DataError("batch_size %d: larger than this rank's share of the training set (%d images = "
                            "n_train %d / %d ranks)" % (batch_size, self.n_train // self.size, self.n_train, self.size))
        return n_steps

    def _pass(self, batch_size, n_pass, skip):
        """Pass n_pass's batches, less its first `skip` (which are not augmented: each batch's
        augmentation has its own random stream, from (seed, pass, rank, batch))."""
        n_steps = self._steps_per_pass(batch_size)
        start = self.rank * (self.n_train // self.size)
        order, rng = _rng(self.seed, n_pass, _ORDER), _rng(self.seed, n_pass, self.rank, _SHUFFLE)
        window = max(4 * batch_size, _WINDOW_BYTES // int(np.prod(self.image_shape)))
        batches = self._train.shuffled(order, start, start + n_steps * batch_size, batch_size, rng, window)
        for i, (x, y) in enumerate(batches):
            if i >= skip:
                yield self._finish(x, y, _rng(self.seed, n_pass, self.rank, _AUGMENT, i))

    def test_batches(self, batch_size):
        """Yield (x, y) over this rank's share of the test set once, in order, not augmented;
        the last batch may be smaller.  The ranks' shares are disjoint and cover the set."""
        batch_size = check_int(batch_size, "batch_size", 1)
        start, stop = self.test_range()

        def produce():
            for x, y in self._test.ordered(start, stop, batch_size):
                yield self._finish(x, y, None)

        return prefetched(produce)

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
