"""Format: openai/glow's TFRecords (imagenet-oord, imagenet, celeba, lsun_realnvp, lsun), laid out as
its get_data.py reads them: {split}/{split}-rNN-s-SSSS-of-TTTT.tfrecords, NN = log2 px, SSSS of TTTT shards.

Each record is a tf.train.Example: 'shape' int64 [3] (H, W, C), 'data' bytes (uint8 HWC), 'label'
int64 [1].  lsun_realnvp stores ~96 px images under r06 and takes a random 64x64 crop (the centre
one for test here).  Up front only the record framing is scanned, to count records; TensorFlow
(imported on first read) reads a file when needed, checking the CRCs.
"""
import functools
import itertools
import os
import re
import struct

import numpy as np

from .common import DataError, PartsSource, downsample, pool_factor

SPLITS = ("train", "validation")
EXPECTED = "train/train-rNN-s-SSSS-of-TTTT.tfrecords, validation/validation-rNN-s-SSSS-of-TTTT.tfrecords"
SEARCHED, CHANNELS = True, 3
_NAME = re.compile(r"^(train|validation)-r(\d+)-s-(\d+)-of-(\d+)\.tfrecords$")


def find(folder):
    return folder if all(_shards(folder, split) for split in SPLITS) else None


def lacks(folder):
    return "no train/ and validation/ TFRecord shards"


def load(problem, found, image_size, n_channels):
    """Each split's shards at image_size, else at the nearest larger size, average-pooled."""
    sources = []
    for split in SPLITS:
        paths, native = _shard_files(found, split, image_size)
        factor = pool_factor(native, image_size, "%s TFRecords" % split)
        read = functools.partial(_read, paths, native, factor, problem.n_y, problem.name == "lsun_realnvp")
        sources.append(PartsSource([_count_records(p) for p in paths], read))
    return sources[0], sources[1], problem.n_y


def _shards(folder, split):
    """{log2 size: {shard index: (n_shards, path)}} of the files in folder/split ({} if none)."""
    split_dir, by_res = os.path.join(folder, split), {}
    for name in sorted(os.listdir(split_dir)) if os.path.isdir(split_dir) else []:
        m = _NAME.match(name)
        if m and m.group(1) == split:
            by_res.setdefault(int(m.group(2)), {})[int(m.group(3))] = (int(m.group(4)), os.path.join(split_dir, name))
    return by_res


def _shard_files(folder, split, image_size):
    """(paths in shard order, native px): the complete set at image_size, else the nearest larger size."""
    split_dir, by_res = os.path.join(folder, split), _shards(folder, split)
    res = min((r for r in by_res if 2 ** r >= image_size), default=None)
    if res is None:
        raise DataError("image_size %d: %s has TFRecords only up to %d px (%s); use a smaller image_size" % (
            image_size, split_dir, 2 ** max(by_res), ", ".join("r%02d" % r for r in sorted(by_res))))
    shards, total = by_res[res], max(t for t, _ in by_res[res].values())
    missing = [i for i in range(total) if i not in shards]
    if missing or any(t != total for t, _ in shards.values()):
        raise DataError("%s: incomplete set of r%02d shards: %d of %d present; missing e.g. %s-r%02d-s-%04d-of-%04d"
                        ".tfrecords" % (split_dir, res, len(shards), total, split, res, (missing or [0])[0], total))
    return [shards[i][1] for i in range(total)], 2 ** res


def _count_records(path):
    """Records in a TFRecord file, from its framing alone (uint64 length, uint32 CRC of the
    length, payload, uint32 CRC per record): no payload is read."""
    size, n, pos = os.path.getsize(path), 0, 0
    with open(path, "rb") as f:
        while pos < size:
            head = f.read(12)
            if len(head) < 12:
                raise DataError("%s: record %d has a cut-off header (truncated file)" % (path, n))
            pos += 12 + struct.unpack("<Q", head[:8])[0] + 4
            if pos > size:
                raise DataError("%s: record %d claims %d bytes past the end of the file "
                                "(truncated)" % (path, n, pos - size))
            f.seek(pos)
            n += 1
    return n


def _read(paths, native, factor, n_y, crops, part, lo, hi, rng=None):
    """Records lo..hi-1 of file `part` as (x uint8 [n, S, S, 3] pooled by factor, y int32 [n]).
    An image larger than native px is cropped if `crops` (at random with rng, else centred)."""
    import tensorflow.compat.v1 as tf
    images, labels, s = [], [], native
    try:
        for index, record in enumerate(itertools.islice(tf.io.tf_record_iterator(paths[part]), lo, hi), lo):
            where = "%s record %d" % (paths[part], index)
            image, label = _decode(record, where, n_y)
            h, w, _ = image.shape
            if (h, w) != (s, s):
                if not (crops and h >= s and w >= s):
                    raise DataError("%s: image is %dx%d, the file name (r%02d) says %dx%d" % (
                        where, h, w, int(np.log2(s)), s, s))
                top, left = ((h - s) // 2, (w - s) // 2) if rng is None else (
                    rng.randint(0, h - s + 1), rng.randint(0, w - s + 1))
                image = image[top:top + s, left:left + s]
            images.append(image)
            labels.append(label)
    except tf.errors.OpError as exc:
        raise DataError("%s: cannot read it (%s): the file is damaged" % (paths[part], exc.message)) from exc
    x = np.stack(images) if images else np.zeros((0, s, s, 3), np.uint8)
    return downsample(x, factor), np.asarray(labels, np.int32)


def _decode(record, where, n_y):
    """(image uint8 [H, W, 3], label) from a serialized tf.train.Example."""
    import tensorflow.compat.v1 as tf
    from google.protobuf.message import DecodeError
    try:
        feature = tf.train.Example.FromString(record).features.feature
    except DecodeError as exc:
        raise DataError("%s: not a tf.train.Example (%s)" % (where, exc)) from exc
    for key in ("shape", "data"):
        if key not in feature:
            raise DataError("%s: no %r feature (expected 'shape', 'data', 'label')" % (where, key))
    shape, data = list(feature["shape"].int64_list.value), feature["data"].bytes_list.value
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1 or len(data) != 1:
        raise DataError("%s: 'shape' %s / %d 'data' values: expected [H, W, 3] and one byte "
                        "string" % (where, shape, len(data)))
    if shape[0] * shape[1] * shape[2] != len(data[0]):
        raise DataError("%s: 'shape' %s needs %d bytes, 'data' has %d" % (
            where, shape, shape[0] * shape[1] * shape[2], len(data[0])))
    labels = list(feature["label"].int64_list.value) if "label" in feature else []
    if not labels and n_y > 1:  # unlabeled problems (n_y 1) may omit it
        raise DataError("%s: no 'label' (this problem has %d classes)" % (where, n_y))
    label = labels[0] if labels else 0
    if not 0 <= label < n_y:
        raise DataError("%s: label %d out of range 0..%d" % (where, label, n_y - 1))
    return np.frombuffer(data[0], np.uint8).reshape(shape), label  # [H, W, 3]
