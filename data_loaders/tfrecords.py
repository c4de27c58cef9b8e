"""Format: openai/glow's TFRecord data sets (imagenet-oord, imagenet, celeba, lsun_realnvp, lsun).

Layout (openai/glow data_loaders/get_data.py and generate_tfr/):
  {data_dir}/train/train-rNN-s-SSSS-of-TTTT.tfrecords
  {data_dir}/validation/validation-rNN-s-SSSS-of-TTTT.tfrecords
NN = log2 of the image size, SSSS = shard index, TTTT = number of shards.
Each record is a tf.train.Example with 'shape' int64 [3] (H, W, C), 'data'
bytes (raw uint8 HWC) and 'label' int64 [1].  lsun_realnvp stores ~96 px
images under r06 and takes a random 64x64 crop (centre crop for test here).

Files are read lazily, one at a time: at start only the record framing is
scanned (to count records); TensorFlow (imported on first read) reads the
records, checking their CRCs.
"""
import os
import re
import struct

import numpy as np

from .common import DataError, downsample, pool_factor
from .sources import PartsSource

SPLITS = ("train", "validation")
EXPECTED = "train/train-rNN-s-SSSS-of-TTTT.tfrecords, validation/validation-rNN-s-SSSS-of-TTTT.tfrecords"
SEARCHED, CHANNELS = True, 3
_NAME = re.compile(r"^(train|validation)-r(\d+)-s-(\d+)-of-(\d+)\.tfrecords$")


def find(folder):
    """folder itself if it has train/ and validation/ TFRecord shards, else None."""
    if all(os.path.isdir(os.path.join(folder, split)) and _shards(os.path.join(folder, split), split)
           for split in SPLITS):
        return folder
    return None


def lacks(folder):
    return "no train/ and validation/ TFRecord shards"


def load(problem, found, image_size, n_channels):
    """The shards at image_size, else the nearest larger size, average-pooled."""
    sources = []
    for split in SPLITS:
        paths, native = _shard_files(found, split, image_size)
        factor = pool_factor(native, image_size, "%s TFRecords" % split)
        read = _Reader(paths, native, factor, problem.n_y, crops=problem.name == "lsun_realnvp")
        sources.append(PartsSource([_count_records(p) for p in paths], read))
    return sources[0], sources[1], problem.n_y


def _shards(split_dir, split):
    """{log2 size: {shard index: (n_shards, path)}} of the split's files in split_dir."""
    by_res = {}
    for name in sorted(os.listdir(split_dir)):
        m = _NAME.match(name)
        if m and m.group(1) == split:
            shard = by_res.setdefault(int(m.group(2)), {})
            shard[int(m.group(3))] = (int(m.group(4)), os.path.join(split_dir, name))
    return by_res


def _shard_files(folder, split, image_size):
    """(paths in shard order, native px): the files at image_size, else the nearest larger size."""
    split_dir = os.path.join(folder, split)
    by_res = _shards(split_dir, split)
    want = int(np.log2(image_size))
    usable = sorted(r for r in by_res if r >= want)
    if not usable:
        raise DataError("image_size %d: %s has TFRecords only up to %d px (%s); use a smaller "
                        "image_size" % (image_size, split_dir, 2 ** max(by_res),
                                        ", ".join("r%02d" % r for r in sorted(by_res))))
    shards = by_res[usable[0]]
    totals = set(total for total, _ in shards.values())
    total = max(totals)
    missing = [i for i in range(total) if i not in shards]
    if missing or len(totals) > 1:
        raise DataError("%s: incomplete set of r%02d shards: %d of %d present; missing e.g. "
                        "%s-r%02d-s-%04d-of-%04d.tfrecords" % (
                            split_dir, usable[0], len(shards), total, split, usable[0],
                            (missing or [0])[0], total))
    return [shards[i][1] for i in range(total)], 2 ** usable[0]


def _count_records(path):
    """Number of records in a TFRecord file, from its framing alone (no payload is read).

    Each record is: uint64 length, uint32 CRC of the length, payload, uint32 CRC.
    """
    size = os.path.getsize(path)
    n, pos = 0, 0
    with open(path, "rb") as f:
        while pos < size:
            head = f.read(12)
            if len(head) < 12:
                raise DataError("%s: record %d has a cut-off header (truncated file)" % (path, n))
            (length,) = struct.unpack("<Q", head[:8])
            pos += 12 + length + 4
            if pos > size:
                raise DataError("%s: record %d claims %d bytes past the end of the file "
                                "(truncated)" % (path, n, pos - size))
            f.seek(pos)
            n += 1
    return n


class _Reader(object):
    """read(part, lo, hi, rng) -> records lo..hi-1 of file `part` as (x [n, S, S, 3], y [n]): images
    of native px (larger ones cropped if `crops`) pooled by `factor`, labels checked to be in 0..n_y-1."""

    def __init__(self, paths, native, factor, n_y, crops):
        self.paths, self.native, self.factor = paths, native, factor
        self.n_y, self.crops = n_y, crops

    def __call__(self, part, lo, hi, rng=None):
        path = self.paths[part]
        images, labels = [], []
        for index, record in _records(path, lo, hi):
            image, label = _decode(record, "%s record %d" % (path, index), self.n_y)
            images.append(self._fit(image, path, index, rng))
            labels.append(label)
        x = np.stack(images) if images else np.zeros((0, self.native, self.native, 3), np.uint8)
        return downsample(x, self.factor), np.asarray(labels, np.int32)

    def _fit(self, image, path, index, rng):
        """image as stored if it has native px, else (lsun_realnvp) its crop: random with rng, else centred."""
        (h, w, _), s = image.shape, self.native
        if (h, w) == (s, s):
            return image
        if not (self.crops and h >= s and w >= s):
            raise DataError("%s record %d: image is %dx%d, the file name (r%02d) says %dx%d"
                            % (path, index, h, w, int(np.log2(s)), s, s))
        if rng is None:
            top, left = (h - s) // 2, (w - s) // 2
        else:
            top, left = rng.randint(0, h - s + 1), rng.randint(0, w - s + 1)
        return image[top:top + s, left:left + s]


def _records(path, lo, hi):
    """Yield (index, serialized record) for records lo..hi-1 of one file."""
    import tensorflow.compat.v1 as tf
    try:
        for index, record in enumerate(tf.io.tf_record_iterator(path)):
            if index >= hi:
                return
            if index >= lo:
                yield index, record
    except tf.errors.OpError as exc:
        raise DataError("%s: cannot read it (%s): the file is damaged" % (path, exc.message)) from exc


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
    shape = list(feature["shape"].int64_list.value)
    data = feature["data"].bytes_list.value
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1 or len(data) != 1:
        raise DataError("%s: 'shape' %s / %d 'data' values: expected [H, W, 3] and one byte "
                        "string" % (where, shape, len(data)))
    if shape[0] * shape[1] * shape[2] != len(data[0]):
        raise DataError("%s: 'shape' %s needs %d bytes, 'data' has %d" % (
            where, shape, shape[0] * shape[1] * shape[2], len(data[0])))
    values = list(feature["label"].int64_list.value) if "label" in feature else []
    label = values[0] if values else 0 if n_y == 1 else None  # unlabeled problems may omit it
    if label is None:
        raise DataError("%s: no 'label' (this problem has %d classes)" % (where, n_y))
    if not 0 <= label < n_y:
        raise DataError("%s: label %d out of range 0..%d" % (where, label, n_y - 1))
    return np.frombuffer(data[0], np.uint8).reshape(shape), label  # [H, W, 3]
