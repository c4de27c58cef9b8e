"""Format: a folder of PNG / JPEG images (problem 'folder'), found only at --data_dir.

Classes: if the top level holds subfolders and no images, each subfolder is a
class (n_y = number of subfolders, in sorted order); otherwise every image
below the folder is one class (n_y = 1).  Test split: if the folder has
exactly the subfolders train/ and test/, those (classes taken from train/);
otherwise every 10th image of each class in sorted file order (a fixed
split, the same for every seed, so test scores compare across runs).
Images are centre-cropped to a square and resized (Lanczos) to image_size.
"""
import os

import numpy as np
from PIL import Image

from .common import DataError
from .sources import ArraySource

EXTENSIONS = (".png", ".jpg", ".jpeg")
EXPECTED = "*.png, *.jpg, *.jpeg (class subfolders optional)"
SEARCHED, CHANNELS = False, None
TEST_EVERY = 10
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


def find(folder):
    return folder if _images_below(folder) else None


def lacks(folder):
    return "no %s images below it" % "/".join(EXTENSIONS)


def load(problem, found, image_size, n_channels):
    """Every image read now, centre-cropped and resized (n_channels None means RGB)."""
    train, test, names = _scan(found)
    n_channels = n_channels or 3
    sources = []
    for items in (train, test):
        x = np.zeros((len(items), image_size, image_size, n_channels), np.uint8)
        for i, (path, _) in enumerate(items):
            x[i] = _load_image(path, image_size, n_channels)
        sources.append(ArraySource(x, np.array([label for _, label in items], np.int32)))
    return sources[0], sources[1], max(len(names), 1)


def _visible(folder):
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))


def _images_below(folder):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return found


def _classes(folder):
    """[(class name, [image paths])] for one folder, per the module docstring."""
    entries = _visible(folder)
    subdirs = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    has_images = any(e.lower().endswith(EXTENSIONS) for e in entries)
    if subdirs and not has_images:
        return [(d, _images_below(os.path.join(folder, d))) for d in subdirs]
    return [("", _images_below(folder))]


def _scan(folder):
    """(train, test, class names); train and test are lists of (path, label)."""
    entries = _visible(folder)
    if sorted(entries) == ["test", "train"] and all(
            os.path.isdir(os.path.join(folder, e)) for e in entries):
        train_classes = _classes(os.path.join(folder, "train"))
        names = [name for name, _ in train_classes]
        test_classes = _classes(os.path.join(folder, "test"))
        unknown = [n for n, _ in test_classes if n not in names]
        if unknown:
            raise DataError("%s: test/ has classes %s that train/ lacks" % (folder, unknown))
        train = [(p, names.index(n)) for n, paths in train_classes for p in paths]
        test = [(p, names.index(n)) for n, paths in test_classes for p in paths]
    else:
        classes = _classes(folder)
        names = [name for name, _ in classes]
        train, test = [], []
        for label, (_, paths) in enumerate(classes):
            for i, path in enumerate(paths):
                (test if i % TEST_EVERY == TEST_EVERY - 1 else train).append((path, label))
    if not train or not test:
        raise DataError("%s: found %d training and %d test images (%s); need at least one of "
                        "each (the automatic split holds out every %dth image of a class)" % (
                            folder, len(train), len(test), "/".join(EXTENSIONS), TEST_EVERY))
    return train, test, names


def _load_image(path, image_size, n_channels):
    """uint8 [image_size, image_size, n_channels] from one image file."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if n_channels == 1 else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError("%s: not a readable image (%s)" % (path, exc)) from exc
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side):
        image = image.crop((left, top, left + side, top + side))
    if side != image_size:
        image = image.resize((image_size, image_size), _LANCZOS)
    return np.asarray(image, np.uint8).reshape(image_size, image_size, n_channels)

