"""What every part of data_loaders shares: the one exception type, argument checks, and
average-pool downsampling of uint8 image batches [N, H, W, C]."""
import numpy as np


class DataError(ValueError):
    """A data set is missing, malformed, unsafe, or asked for with bad arguments.

    The message names the bad value or file and says what would be accepted,
    so the training program can print it as is (no TensorFlow traceback).
    """


def check_int(value, what, low):
    """int(value), or DataError unless value is an integer (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError("%s %r: must be an integer >= %d" % (what, value, low))
    return int(value)


def is_power_of_two(n):
    return n >= 1 and n & (n - 1) == 0


def check_image_size(image_size):
    """int(image_size), or DataError unless it is a positive power of two."""
    ok = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not ok or not is_power_of_two(int(image_size)):
        raise DataError("image_size %r: must be a power of two (e.g. 32)" % (image_size,))
    return int(image_size)


def pool_factor(native, image_size, what):
    """The integer factor that average-pools `native` px images of `what` to image_size."""
    if image_size > native:
        raise DataError("image_size %d: larger than the %d px images of %s; use %d or a "
                        "smaller power of two" % (image_size, native, what, native))
    factor = native // image_size
    if native % image_size or not is_power_of_two(factor):
        raise DataError("image_size %d: the %d px images of %s can only be downsampled by a "
                        "power of two (e.g. %d)" % (image_size, native, what, native // 2))
    return factor


def downsample(x, factor):
    """Average-pool uint8 x [N, H, W, C] by `factor` in both dimensions.

    The block mean is floored, as openai/glow's downsample + x_to_uint8 did;
    integer arithmetic makes the floor exact (no float round-off).
    """
    if factor == 1:
        return x
    n, h, w, c = x.shape
    blocks = x.reshape(n, h // factor, factor, w // factor, factor, c)  # [N, H/f, f, W/f, f, C]
    sums = blocks.sum(axis=(2, 4), dtype=np.int64)  # [N, H/f, W/f, C]
    return (sums // (factor * factor)).astype(np.uint8)
