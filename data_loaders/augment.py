"""Data augmentation (openai/glow's --dal), in numpy.

openai/glow used Keras 2.2.0's ImageDataGenerator: dal 1 shifts by up to 10% of the side;
dal 2 adds horizontal flips, rotation_range=15, zoom_range=0.1 and shear_range=0.02 (both
angles in degrees in that Keras); mnist gets shifts only.  This module draws the same
distributions (per image: shifts, rotation and shear uniform in +-range, row and column
zoom independently uniform in [0.9, 1.1], a flip with probability 1/2) from its own
RandomState, resamples bilinearly about the pixel centre ((H-1)/2, (W-1)/2), repeats the
edge pixel outside the image (Keras' fill_mode='nearest') and floors to uint8 as
openai/glow's x_to_uint8 did.
"""
import collections

import numpy as np

from .common import DataError

Augmentation = collections.namedtuple("Augmentation", "shift rotation zoom shear flip")
Augmentation.__doc__ = """Ranges of the random transforms (see the module docstring).
shift: fraction of the side; rotation: degrees; zoom: +- fraction; shear: degrees;
flip: left-right flip with probability 1/2."""

SHIFTS = Augmentation(shift=0.1, rotation=0.0, zoom=0.0, shear=0.0, flip=False)
EXTRA = Augmentation(shift=0.1, rotation=15.0, zoom=0.1, shear=0.02, flip=True)

# Problems whose images must not be flipped or rotated (openai/glow: mnist got shifts only).
_SHIFT_ONLY = ("mnist", "fashion-mnist")
# openai/glow read these from TFRecords and applied no augmentation at all.
_NOT_AUGMENTED = ("imagenet-oord", "imagenet", "celeba", "lsun_realnvp", "lsun")


def augmentation_for(problem, dal):
    """The Augmentation for openai/glow's data augmentation level `dal`, or None."""
    if isinstance(dal, bool) or dal not in (0, 1, 2):
        raise DataError("dal %r: must be 0 (none), 1 (random shifts) or 2 (shifts, flips, "
                        "rotation, zoom, shear)" % (dal,))
    if dal == 0:
        return None
    if problem in _NOT_AUGMENTED:
        if dal == 2:
            raise DataError("dal 2: problem %s is not augmented (openai/glow applied no "
                            "augmentation to its TFRecord problems); use 0 or 1, which both "
                            "mean none for it" % problem)
        return None
    if problem in _SHIFT_ONLY or dal == 1:
        return SHIFTS
    return EXTRA


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
    t_row = rng.uniform(-aug.shift, aug.shift, n) * h
    t_col = rng.uniform(-aug.shift, aug.shift, n) * w
    shear = np.deg2rad(rng.uniform(-aug.shear, aug.shear, n))
    zoom_row, zoom_col = rng.uniform(1 - aug.zoom, 1 + aug.zoom, (2, n))
    flips = rng.uniform(size=n) < 0.5 if aug.flip else np.zeros(n, bool)
    one, zero = np.ones(n), np.zeros(n)
    rotate = _stack([[np.cos(theta), -np.sin(theta), zero], [np.sin(theta), np.cos(theta), zero]])
    shift = _stack([[one, zero, t_row], [zero, one, t_col]])
    sheared = _stack([[one, -np.sin(shear), zero], [zero, np.cos(shear), zero]])
    zoom = _stack([[zoom_row, zero, zero], [zero, zoom_col, zero]])
    # Keras' order: rotate . shift . shear . zoom, applied about the image centre.
    m = np.matmul(np.matmul(np.matmul(rotate, shift), sheared), zoom)  # [n, 3, 3]
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    m[:, :2, 2] += centre - np.einsum("nij,j->ni", m[:, :2, :2], centre)
    return m, flips


def _stack(rows):
    """[n, 3, 3] affine matrices from two rows of per-image arrays (the third is 0 0 1)."""
    n = len(rows[0][0])
    top = np.stack([np.stack(r, axis=-1) for r in rows], axis=1)  # [n, 2, 3]
    last = np.tile(np.array([[[0.0, 0.0, 1.0]]]), (n, 1, 1))  # [n, 1, 3]
    return np.concatenate([top, last], axis=1)  # [n, 3, 3]


def warp(x, matrices):
    """Resample uint8 x [B, H, W, C] at matrices[b] @ (row, col, 1): bilinear, edge-repeating."""
    n, h, w, _ = x.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)  # [H, W] each
    m = matrices[:, :, :, None, None]  # [B, 3, 3, 1, 1]
    src_r = m[:, 0, 0] * rows + m[:, 0, 1] * cols + m[:, 0, 2]  # [B, H, W]
    src_c = m[:, 1, 0] * rows + m[:, 1, 1] * cols + m[:, 1, 2]  # [B, H, W]
    # Clamping the sample point equals Keras' fill_mode='nearest' for bilinear sampling.
    src_r, src_c = np.clip(src_r, 0, h - 1), np.clip(src_c, 0, w - 1)
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
