"""Pixel operations on uint8 image batches [N, H, W, C]: size checks, padding,
average-pool downsampling and centre / random crops."""
import numpy as np

from .errors import DataError


def is_power_of_two(n):
    return n >= 1 and n & (n - 1) == 0


def check_image_size(image_size):
    """Raise DataError unless image_size is a positive power of two."""
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


def pad_28_to_32(x):
    """Zero-pad MNIST-style x [N, 28, 28] by 2 pixels each side -> [N, 32, 32, 1], as openai/glow."""
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)), mode="constant")  # [N, 32, 32]
    return x[..., None]  # [N, 32, 32, 1]


def crop(image, size, rng=None):
    """Crop a [H, W, C] image to [size, size, C]: at random with rng, else centred."""
    h, w = image.shape[:2]
    if rng is None:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = rng.randint(0, h - size + 1), rng.randint(0, w - size + 1)
    return image[top:top + size, left:left + size]
