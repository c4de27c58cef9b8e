"""Format: a folder of PNG / JPEG images (problem 'folder'), found only at --data_dir.

Classes: if the top level holds subfolders and no images, each subfolder is a class
(n_y = their number, in sorted order); otherwise every image below is one class (n_y 1).
Test split: if the folder holds exactly the subfolders train/ and test/, those (classes
from train/); otherwise every 10th image of each class in sorted file order (fixed, the
same for every seed, so test scores compare across runs).  Images are centre-cropped to
a square and resized (Lanczos) to image_size.
"""
import os

import numpy as np
from PIL import Image

from .common import ArraySource, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
EXPECTED = "*.png, *.jpg, *.jpeg (class subfolders optional)"
SEARCHED, CHANNELS = False, None
TEST_EVERY = 10
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS


def find(folder):
    return folder if images_below(folder) else None


def lacks(folder):
    return "no %s images below it" % "/".join(EXTENSIONS)


def load(problem, found, image_size, n_channels):
    """Every image read now, centre-cropped and resized (n_channels None means RGB)."""
    train, test, names = _scan(found)
    sources = []
    for items in (train, test):
        x = np.zeros((len(items), image_size, image_size, n_channels or 3), np.uint8)  # filled in place
        for i, (path, _) in enumerate(items):
            x[i] = _load_image(path, image_size, n_channels or 3)
        sources.append(ArraySource(x, np.array([label for _, label in items], np.int32)))
    return sources[0], sources[1], max(len(names), 1)


def images_below(folder):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(EXTENSIONS) and f[0] != "."]
    return found


def _classes(folder):
    """[(class name, [image paths])] of one folder, as the module docstring says."""
    entries = [e for e in sorted(os.listdir(folder)) if not e.startswith(".")]
    subdirs = [e for e in entries if os.path.isdir(os.path.join(folder, e))]
    if subdirs and not any(e.lower().endswith(EXTENSIONS) for e in entries):
        return [(d, images_below(os.path.join(folder, d))) for d in subdirs]
    return [("", images_below(folder))]


def _scan(folder):
    """(train, test, class names); train and test are lists of (path, label)."""
    entries = [e for e in sorted(os.listdir(folder)) if not e.startswith(".")]
    if entries == ["test", "train"] and all(os.path.isdir(os.path.join(folder, e)) for e in entries):
        train_classes, test_classes = (_classes(os.path.join(folder, e)) for e in ("train", "test"))
        names = [name for name, _ in train_classes]
        unknown = [n for n, _ in test_classes if n not in names]
        if unknown:
            raise DataError("%s: test/ has classes %s that train/ lacks" % (folder, unknown))
        train, test = ([(p, names.index(n)) for n, paths in classes for p in paths]
                       for classes in (train_classes, test_classes))
    else:
        classes = _classes(folder)
        names = [name for name, _ in classes]
        labelled = [(i, path, label) for label, (_, paths) in enumerate(classes) for i, path in enumerate(paths)]
        train = [(path, label) for i, path, label in labelled if i % TEST_EVERY != TEST_EVERY - 1]
        test = [(path, label) for i, path, label in labelled if i % TEST_EVERY == TEST_EVERY - 1]
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
    (w, h), side = image.size, min(image.size)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != image_size:
        image = image.resize((image_size, image_size), _LANCZOS)
    return np.asarray(image, np.uint8).reshape(image_size, image_size, n_channels)
