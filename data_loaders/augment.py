"""Data augmentation (openai/glow's --dal, which used Keras 2.2.0's ImageDataGenerator), in numpy.

dal 1 shifts by up to 10% of the side.  dal 2 adds a left-right flip (probability 1/2), rotation
and shear uniform in +-15 and +-0.02 degrees (both in degrees in that Keras) and row and column
zoom each uniform in [0.9, 1.1]; mnist gets shifts only.  Images are resampled bilinearly about
the pixel centre ((H-1)/2, (W-1)/2), repeating the edge pixel outside (fill_mode='nearest'), and
floored to uint8 as openai/glow's x_to_uint8 did.  Draws come from the RandomState passed in.
"""
import collections

import numpy as np

from .common import DataError

Augmentation = collections.namedtuple("Augmentation", "shift rotation zoom shear flip")
Augmentation.__doc__ = """Ranges: shift (fraction of the side), rotation and shear (degrees), zoom (+- fraction);
flip: left-right with probability 1/2."""
SHIFTS = Augmentation(shift=0.1, rotation=0.0, zoom=0.0, shear=0.0, flip=False)
EXTRA = Augmentation(shift=0.1, rotation=15.0, zoom=0.1, shear=0.02, flip=True)
# openai/glow gave mnist shifts only (no flipped or rotated digits), its TFRecord problems nothing.
_SHIFT_ONLY = ("mnist", "fashion-mnist")
_NOT_AUGMENTED = ("imagenet-oord", "imagenet", "celeba", "lsun_realnvp", "lsun")


def augmentation_for(problem, dal):
    """The Augmentation for openai/glow's data augmentation level `dal`, or None."""
    if isinstance(dal, bool) or dal not in (0, 1, 2):
        raise DataError("dal %r: must be 0 (none), 1 (random shifts) or 2 (shifts, flips, rotation, zoom, "
                        "shear)" % (dal,))
    if dal == 2 and problem in _NOT_AUGMENTED:
        raise DataError("dal 2: problem %s is not augmented (openai/glow applied no augmentation to its "
                        "TFRecord problems); use 0 or 1, which both mean none for it" % problem)
    if dal == 0 or problem in _NOT_AUGMENTED:
        return None
    return SHIFTS if problem in _SHIFT_ONLY or dal == 1 else EXTRA


def augment(x, aug, rng):
    """Apply random transforms drawn from `aug` with `rng` to uint8 x [B, H, W, C]."""
    n, h, w, _ = x.shape
    matrices, flips = _draw(aug, rng, n, h, w)
    out = warp(x, matrices)
    out[flips] = out[flips, :, ::-1]
    return out


def _draw(aug, rng, n, h, w):
    """Per-image 3x3 maps from output (row, col, 1) to input coordinates, and flips."""
    theta = np.deg2rad(rng.uniform(-aug.rotation, aug.rotation, n))
    shift = rng.uniform(-aug.shift, aug.shift, (2, n)) * [[h], [w]]  # rows, then columns
    shear = np.deg2rad(rng.uniform(-aug.shear, aug.shear, n))
    zoom_row, zoom_col = rng.uniform(1 - aug.zoom, 1 + aug.zoom, (2, n))
    flips = rng.uniform(size=n) < 0.5 if aug.flip else np.zeros(n, bool)
    rotate = np.moveaxis([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], -1, 0)  # [n, 2, 2]
    shear_zoom = np.moveaxis([[zoom_row, -np.sin(shear) * zoom_col],
                              [0 * shear, np.cos(shear) * zoom_col]], -1, 0)  # [n, 2, 2]
    # Keras' order rotate . shift . shear . zoom, about the image centre c:
    # input = R Sh Z (output - c) + R t + c.
    m = np.tile(np.eye(3), (n, 1, 1))  # [n, 3, 3]
    m[:, :2, :2] = np.matmul(rotate, shear_zoom)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    m[:, :2, 2] = np.einsum("nij,jn->ni", rotate, shift) + centre - np.matmul(m[:, :2, :2], centre)
    return m, flips


def warp(x, matrices):
    """Resample uint8 x [B, H, W, C] at matrices[b] @ (row, col, 1): bilinear, edge-repeating."""
    n, h, w, _ = x.shape
    grid = np.concatenate([np.mgrid[0:h, 0:w], np.ones((1, h, w))])  # [3, H, W]: row, col, 1
    src = np.einsum("bij,jhw->bihw", matrices[:, :2], grid)  # [B, 2, H, W]
    # Clamping the sample point equals Keras' fill_mode='nearest' for bilinear sampling.
    src_r, src_c = np.clip(src[:, 0], 0, h - 1), np.clip(src[:, 1], 0, w - 1)  # [B, H, W]
    r0 = np.minimum(np.floor(src_r).astype(np.int64), max(h - 2, 0))
    c0 = np.minimum(np.floor(src_c).astype(np.int64), max(w - 2, 0))
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = (src_r - r0)[..., None], (src_c - c0)[..., None]  # [B, H, W, 1]
    b = np.arange(n)[:, None, None]
    top = x[b, r0, c0] * (1 - fc) + x[b, r0, c1] * fc  # [B, H, W, C]
    bottom = x[b, r1, c0] * (1 - fc) + x[b, r1, c1] * fc
    value = top * (1 - fr) + bottom * fr
    # Floor as openai/glow; the 1e-6 keeps round-off in the weights (which sum to 1)
    # from turning an exact level k into k - 1.
    return np.clip(np.floor(value + 1e-6), 0, 255).astype(np.uint8)
