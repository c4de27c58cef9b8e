"""openai/glow's TFRecord data sets (imagenet-oord, imagenet, celeba, lsun_realnvp, lsun).

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

from .errors import DataError
from .images import crop, downsample

SPLITS = ("train", "validation")
EXPECTED = ["train/train-rNN-s-SSSS-of-TTTT.tfrecords",
            "validation/validation-rNN-s-SSSS-of-TTTT.tfrecords"]
_NAME = re.compile(r"^(train|validation)-r(\d+)-s-(\d+)-of-(\d+)\.tfrecords$")


def find(folder):
    """folder itself if it has train/ and validation/ TFRecord shards, else None."""
    for split in SPLITS:
        split_dir = os.path.join(folder, split)
        if not (os.path.isdir(split_dir) and _shards(split_dir, split)):
            return None
    return folder


def _shards(split_dir, split):
    """{log2 size: {shard index: (n_shards, path)}} of the split's files in split_dir."""
    by_res = {}
    for name in sorted(os.listdir(split_dir)):
        m = _NAME.match(name)
        if m and m.group(1) == split:
            shard = by_res.setdefault(int(m.group(2)), {})
            shard[int(m.group(3))] = (int(m.group(4)), os.path.join(split_dir, name))
    return by_res


def shard_files(folder, split, image_size):
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


def count_records(path):
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


class TFRecordReader(object):
    """read(part, lo, hi, rng) -> records lo..hi-1 of one file as (x [n, S, S, 3], y [n]).

    native: px of the stored images (after the crop, for lsun_realnvp);
    factor: average-pooling factor to image_size; n_y: labels must be in 0..n_y-1;
    crops: True for lsun_realnvp (random crop with rng, centre crop without).
    """

    def __init__(self, paths, native, factor, n_y, crops):
        self.paths, self.native, self.factor = paths, native, factor
        self.n_y, self.crops = n_y, crops

    def __call__(self, part, lo, hi, rng=None):
        path = self.paths[part]
        images, labels = [], []
        for index, record in _records(path, lo, hi):
            image, label = decode(record, "%s record %d" % (path, index), self.n_y)
            images.append(self._fit(image, path, index, rng))
            labels.append(label)
        x = np.stack(images) if images else np.zeros((0, self.native, self.native, 3), np.uint8)
        return downsample(x, self.factor), np.asarray(labels, np.int32)

    def _fit(self, image, path, index, rng):
        h, w, _ = image.shape
        s = self.native
        if (h, w) == (s, s):
            return image
        if self.crops and h >= s and w >= s:
            return crop(image, s, rng)
        raise DataError("%s record %d: image is %dx%d, the file name (r%02d) says %dx%d"
                        % (path, index, h, w, int(np.log2(s)), s, s))


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


def decode(record, where, n_y):
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
    image = np.frombuffer(data[0], np.uint8).reshape(shape)  # [H, W, 3]
    return image, _label(feature, where, n_y)


def _label(feature, where, n_y):
    values = list(feature["label"].int64_list.value) if "label" in feature else []
    if not values:
        if n_y == 1:
            return 0
        raise DataError("%s: no 'label' (this problem has %d classes)" % (where, n_y))
    if not 0 <= values[0] < n_y:
        raise DataError("%s: label %d out of range 0..%d" % (where, values[0], n_y - 1))
    return values[0]
