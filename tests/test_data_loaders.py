"""Tests of data_loaders: every file format written small in its official layout and read
back pixel-exact, every bad input refused with a message naming it, sharding, determinism,
the prefetch thread, verified downloads, and the real Fashion-MNIST when installed."""
import codecs
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

import data_loaders
from data_loaders import DataError, get_data
from data_loaders import augment as augment_mod
from data_loaders.data import THREAD_NAME

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No standard data folder of this machine is visible: HOME, cwd and /usr/share/datasets moved."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(str(cwd))
    monkeypatch.setattr(data_loaders, "SYSTEM_DATASETS", str(tmp_path / "system"))
    return tmp_path


def one_pass(data, batch_size, n_pass=1):
    """Pass number n_pass (from 1) over this rank's share of the training set: its stretch of train_stream."""
    per_pass = (data.n_train // data.size) // batch_size
    return data.train_stream(batch_size, (n_pass - 1) * per_pass, per_pass)


def all_batches(batches):
    xs, ys = zip(*list(batches))
    return np.concatenate(xs), np.concatenate(ys)


def rows(x):
    return set(img.tobytes() for img in x)


# ---------------------------------------------------------------- IDX (MNIST format)

def idx_bytes(array, magic):
    return struct.pack(">i", magic) + struct.pack(">%di" % array.ndim, *array.shape) + array.tobytes()


def write_idx_dir(folder, n_train=40, n_test=13, gz=True, seed=0):
    rng = np.random.RandomState(seed)
    arrays = {"x_train": rng.randint(0, 256, (n_train, 28, 28)).astype(np.uint8),
              "y_train": rng.randint(0, 10, n_train).astype(np.uint8),
              "x_test": rng.randint(0, 256, (n_test, 28, 28)).astype(np.uint8),
              "y_test": rng.randint(0, 10, n_test).astype(np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    contents = [(arrays["x_train"], 2051), (arrays["y_train"], 2049),
                (arrays["x_test"], 2051), (arrays["y_test"], 2049)]
    for name, (array, magic) in zip(IDX_NAMES, contents):
        raw = idx_bytes(array, magic)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


def padded(x28):
    out = np.zeros((len(x28), 32, 32, 1), np.uint8)
    out[:, 2:30, 2:30, 0] = x28
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_read_back_padded_pixel_exact(isolated, gz):
    a = write_idx_dir(isolated / "mnist", gz=gz)
    data = get_data("mnist", data_dir=str(isolated / "mnist"), dal=0, download=False)
    assert (data.n_train, data.n_test, data.n_y, data.image_shape) == (40, 13, 10, (32, 32, 1))
    x, y = all_batches(data.test_batches(5))
    assert x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x, padded(a["x_test"]))
    np.testing.assert_array_equal(y, a["y_test"])
    x, y = all_batches(one_pass(data, 8))  # 40 = 5 full batches, none dropped
    order = np.argsort([img.tobytes() for img in x])
    want = padded(a["x_train"])
    want_order = np.argsort([img.tobytes() for img in want])
    np.testing.assert_array_equal(x[order], want[want_order])
    np.testing.assert_array_equal(y[order], a["y_train"][want_order])


def test_idx_n_channels_3_tiles_and_image_size_pools(isolated):
    a = write_idx_dir(isolated / "mnist")
    data = get_data("mnist", data_dir=str(isolated / "mnist"), dal=0, n_channels=3, image_size=16)
    assert data.image_shape == (16, 16, 3)
    x, _ = all_batches(data.test_batches(100))
    p = padded(a["x_test"]).astype(np.int64)
    pooled = p.reshape(13, 16, 2, 16, 2, 1).sum(axis=(2, 4)) // 4
    np.testing.assert_array_equal(x, np.repeat(pooled, 3, axis=-1))


def write_one_idx(folder, name, raw, gz):
    folder.mkdir(parents=True, exist_ok=True)
    write_idx_dir(folder, gz=gz)
    path = folder / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_huge_header_is_refused_quickly(isolated, gz):
    raw = struct.pack(">iiii", 2051, 10 ** 9, 1000, 1000) + b"\0" * 100  # 10^15 bytes claimed
    write_one_idx(isolated / "m", IDX_NAMES[0], raw, gz)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*not a plausible"):
        get_data("mnist", data_dir=str(isolated / "m"))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_header_larger_than_data_is_refused(isolated, gz):
    raw = struct.pack(">iiii", 2051, 1000, 28, 28) + b"\0" * 784 * 3
    write_one_idx(isolated / "m", IDX_NAMES[0], raw, gz)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*1000x28x28 = 784000 bytes"):
        get_data("mnist", data_dir=str(isolated / "m"))


def test_idx_bad_magic_names_file_and_expected(isolated):
    raw = struct.pack(">iiii", 2049, 3, 28, 28) + b"\0" * 784 * 3
    write_one_idx(isolated / "m", IDX_NAMES[2], raw, True)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: IDX magic 2049, expected 2051"):
        get_data("mnist", data_dir=str(isolated / "m"))


def test_idx_truncated_gzip(isolated):
    folder = isolated / "m"
    write_idx_dir(folder, n_train=200)
    path = folder / (IDX_NAMES[0] + ".gz")
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read it.*truncated"):
        get_data("mnist", data_dir=str(folder))


def test_idx_label_out_of_range_and_count_mismatch(isolated):
    folder = isolated / "m"
    write_idx_dir(folder)
    labels = np.full(40, 3, np.uint8)
    labels[7] = 12
    (folder / (IDX_NAMES[1] + ".gz")).write_bytes(gzip.compress(idx_bytes(labels, 2049)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: label 12 out of range 0..9"):
        get_data("mnist", data_dir=str(folder))
    (folder / (IDX_NAMES[1] + ".gz")).write_bytes(gzip.compress(idx_bytes(labels[:39] % 10, 2049)))
    with pytest.raises(DataError, match="has 40 images but .*train-labels-idx1-ubyte.gz has 39 labels"):
        get_data("mnist", data_dir=str(folder))


def test_data_dir_missing_file_names_it_and_the_folder(isolated):
    folder = isolated / "m"
    write_idx_dir(folder)
    os.remove(str(folder / (IDX_NAMES[3] + ".gz")))
    with pytest.raises(DataError) as err:
        get_data("mnist", data_dir=str(folder))
    msg = str(err.value)
    assert str(folder) in msg and "lacks t10k-labels-idx1-ubyte[.gz]" in msg
    assert "train-images-idx3-ubyte[.gz]" in msg  # the full list of what is expected


# ---------------------------------------------------------------- CIFAR-10

def _py2_str(b):
    """A Python 2 str as cPickle wrote it (SHORT_BINSTRING / BINSTRING)."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<i", len(b)) + b


def _py2_int(v):
    return b"J" + struct.pack("<i", v)


def py2_cifar_pickle(data, labels):
    """A batch dict pickled as the official files are: Python 2 cPickle, protocol 2."""
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0)
             + b"\x85" + _py2_str(b"b") + b"\x87R"
             + b"(" + _py2_int(1) + _py2_int(len(data)) + _py2_int(3072) + b"\x86"
             + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1)
             + _py2_int(0) + b"tb"
             + b"\x89" + _py2_str(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(_py2_int(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + _py2_str(b"batch_label") + _py2_str(b"training batch 1 of 5")
            + _py2_str(b"labels") + label_list + _py2_str(b"data") + array + b"u.")


CIFAR_BATCHES = ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]


def cifar_arrays(n=4, seed=1):
    rng = np.random.RandomState(seed)
    return [(rng.randint(0, 256, (n, 3072)).astype(np.uint8), rng.randint(0, 10, n))
            for _ in CIFAR_BATCHES]


def cifar_files(layout, arrays, protocol=None):
    """{relative name: bytes} of a CIFAR-10 copy in the given official layout."""
    if layout == "python":
        def blob(data, labels):
            if protocol is None:
                return py2_cifar_pickle(data, labels)
            return pickle.dumps({b"data": data, b"labels": [int(v) for v in labels]}, protocol=protocol)
        return {"cifar-10-batches-py/" + name: blob(d, lab) for name, (d, lab) in zip(CIFAR_BATCHES, arrays)}
    return {"cifar-10-batches-bin/%s.bin" % name: np.concatenate(
        [lab.astype(np.uint8)[:, None], d], axis=1).tobytes()
        for name, (d, lab) in zip(CIFAR_BATCHES, arrays)}


def write_tar(path, files, extra=()):
    with tarfile.open(str(path), "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


def write_files(folder, files):
    for name, blob in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)


def chw_to_hwc(d):
    return d.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("layout,packed,protocol", [
    ("python", False, None), ("python", True, None), ("python", False, 4),
    ("binary", False, None), ("binary", True, None)])
def test_cifar_layouts_pixel_exact(isolated, layout, packed, protocol):
    arrays = cifar_arrays()
    files = cifar_files(layout, arrays, protocol)
    folder = isolated / "c"
    folder.mkdir()
    if packed:
        write_tar(folder / ("cifar-10-%s.tar.gz" % layout), files)
    else:
        write_files(folder, files)
    assert_cifar_read_back(get_data("cifar10", data_dir=str(folder), dal=0), arrays)


def assert_cifar_read_back(data, arrays):
    assert (data.n_train, data.n_test, data.image_shape) == (20, 4, (32, 32, 3))
    x, y = all_batches(data.test_batches(3))
    np.testing.assert_array_equal(x, chw_to_hwc(arrays[5][0]))
    np.testing.assert_array_equal(y, arrays[5][1])
    x, y = all_batches(one_pass(data, 5, 2))
    assert rows(x) == rows(np.concatenate([chw_to_hwc(d) for d, _ in arrays[:5]]))


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar_batch_repickled_by_python3_at_protocol_2(isolated, str_keys):
    """Python 3 pickles bytes (an array's data) at protocol 2 as _codecs.encode(text, 'latin1')."""
    arrays = cifar_arrays()
    folder = isolated / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (d, lab) in zip(CIFAR_BATCHES, arrays):
        batch = {b"batch_label": name.encode(), b"data": d, b"labels": [int(v) for v in lab]}
        with open(str(folder / name), "wb") as f:
            pickle.dump({k.decode(): v for k, v in batch.items()} if str_keys else batch, f, protocol=2)
    assert b"c_codecs\nencode\n" in (folder / "test_batch").read_bytes()
    assert_cifar_read_back(get_data("cifar10", data_dir=str(isolated / "c"), dal=0), arrays)


class _Hostile(object):
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("how", ["system", "open", "eval", "encode"])
def test_cifar_hostile_pickle_is_refused_and_runs_nothing(isolated, how):
    target = isolated / "pwned"
    payload = {"system": _Hostile(os.system, ("touch %s" % target,)),
               "open": _Hostile(open, (str(target), "w")),
               "eval": _Hostile(eval, ("open(%r, 'w')" % str(target),)),
               "encode": _Hostile(codecs.encode, (str(target), "rot13"))}[how]
    files = cifar_files("python", cifar_arrays())
    files["cifar-10-batches-py/data_batch_3"] = pickle.dumps(
        {b"data": payload, b"labels": []}, protocol=4)
    write_files(isolated / "c", files)
    with pytest.raises(DataError) as err:
        get_data("cifar10", data_dir=str(isolated / "c"))
    msg = str(err.value)
    if how == "encode":  # allowed global, but only to turn text into bytes as latin-1
        assert "data_batch_3: the pickle calls _codecs.encode on str with 'rot13'" in msg
    else:
        assert "data_batch_3: refused the pickle global" in msg and how in msg
    assert not target.exists()


def test_cifar_truncated_archive(isolated):
    folder = isolated / "c"
    folder.mkdir()
    path = folder / "cifar-10-binary.tar.gz"
    write_tar(path, cifar_files("binary", cifar_arrays(n=50)))
    blob = path.read_bytes()
    path.write_bytes(blob[:len(blob) * 2 // 3])
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz: (cannot read the archive|archive lacks)"):
        get_data("cifar10", data_dir=str(folder))


def test_cifar_binary_bad_size_and_labels(isolated):
    files = cifar_files("binary", cifar_arrays())
    files["cifar-10-batches-bin/test_batch.bin"] += b"\0" * 5
    write_files(isolated / "c", files)
    with pytest.raises(DataError, match=r"test_batch.bin: 12297 bytes is not a whole number of 3073"):
        get_data("cifar10", data_dir=str(isolated / "c"))
    files["cifar-10-batches-bin/test_batch.bin"] = bytes([11]) + b"\0" * 3072
    write_files(isolated / "c", files)
    with pytest.raises(DataError, match=r"test_batch.bin: labels must be 0..9, found 11..11"):
        get_data("cifar10", data_dir=str(isolated / "c"))


@pytest.mark.parametrize("member", ["../evil", "/tmp/glow-test-abs-evil", "a/../../evil2",
                                    "symlink", "device"])
def test_unsafe_tar_members_are_refused_and_nothing_is_written(isolated, member):
    folder = isolated / "c"
    folder.mkdir()
    info = tarfile.TarInfo(member)
    if member == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif member == "device":
        info.type = tarfile.CHRTYPE
    else:
        info.size = 3
    write_tar(folder / "cifar-10-binary.tar.gz", cifar_files("binary", cifar_arrays()), [info])
    before = set(os.listdir(str(isolated)))
    with pytest.raises(DataError, match="refusing archive member '%s'" % member):
        get_data("cifar10", data_dir=str(folder))
    assert set(os.listdir(str(isolated))) == before
    assert sorted(os.listdir(str(folder))) == ["cifar-10-binary.tar.gz"]
    assert not os.path.exists("/tmp/glow-test-abs-evil")


# ---------------------------------------------------------------- downsampled ImageNet (npz)

def write_imagenet_npz(folder, side=32, per=3, n_val=5, seed=2):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train = []
    for i in range(1, 11):
        d = rng.randint(0, 256, (per, 3 * side * side)).astype(np.uint8)
        lab = rng.randint(1, 1001, per)
        np.savez(str(folder / ("train_data_batch_%d.npz" % i)), data=d, labels=lab, mean=np.zeros(3))
        train.append((d, lab))
    d = rng.randint(0, 256, (n_val, 3 * side * side)).astype(np.uint8)
    lab = rng.randint(1, 1001, n_val)
    np.savez(str(folder / "val_data.npz"), data=d, labels=lab)
    return train, (d, lab)


def test_imagenet32_npz_pixel_exact_and_labels_zero_based(isolated):
    train, (vd, vl) = write_imagenet_npz(isolated / "i32")
    data = get_data("imagenet32", data_dir=str(isolated / "i32"), dal=0)
    assert (data.n_train, data.n_test, data.n_y, data.image_shape) == (30, 5, 1000, (32, 32, 3))
    x, y = all_batches(data.test_batches(2))
    np.testing.assert_array_equal(x, vd.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, vl - 1)
    x, y = all_batches(one_pass(data, 6))
    want = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert rows(x) == rows(want)


def test_imagenet64_downsampled_to_32_by_average_pooling(isolated):
    _, (vd, _) = write_imagenet_npz(isolated / "i64", side=64, per=1, n_val=2)
    data = get_data("imagenet64", data_dir=str(isolated / "i64"), image_size=32, dal=0)
    x, _ = all_batches(data.test_batches(2))
    full = vd.reshape(-1, 3, 64, 64).transpose(0, 2, 3, 1).astype(np.int64)
    np.testing.assert_array_equal(x, full.reshape(2, 32, 2, 32, 2, 3).sum(axis=(2, 4)) // 4)


def test_imagenet_missing_batch_is_named(isolated):
    write_imagenet_npz(isolated / "i32")
    os.remove(str(isolated / "i32" / "train_data_batch_7.npz"))
    with pytest.raises(DataError, match="i32: lacks train_data_batch_7.npz; problem imagenet32 expects"):
        get_data("imagenet32", data_dir=str(isolated / "i32"))


def test_npz_with_pickled_objects_is_refused(isolated):
    write_imagenet_npz(isolated / "i32")
    path = isolated / "i32" / "val_data.npz"
    np.savez(str(path), data=np.array([{"a": 1}] * 2, dtype=object), labels=np.ones(2))
    with pytest.raises(DataError, match="val_data.npz: 'data' is object"):
        get_data("imagenet32", data_dir=str(isolated / "i32"))


# ---------------------------------------------------------------- TFRecords (openai/glow layout)

def write_tfrecord(path, images, labels):
    import tensorflow.compat.v1 as tf
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(images, labels):
            feature = {
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape))),
                "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def write_glow_tfr(folder, side=8, counts=None, seed=3, n_y=1, stored=None):
    """openai/glow's layout; returns {split: (x, y) in shard order}."""
    counts = counts or {"train": [5, 7, 4], "validation": [3, 4]}
    rng = np.random.RandomState(seed)
    out = {}
    for split, shard_counts in counts.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        xs, ys = [], []
        for i, n in enumerate(shard_counts):
            h, w = stored or (side, side)
            x = rng.randint(0, 256, (n, h, w, 3)).astype(np.uint8)
            y = rng.randint(0, n_y, n)
            name = "%s-r%02d-s-%04d-of-%04d.tfrecords" % (split, int(np.log2(side)), i, len(shard_counts))
            write_tfrecord(folder / split / name, x, y)
            xs.append(x)
            ys.append(y)
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def test_tfrecords_pixel_exact_and_sharded(isolated):
    want = write_glow_tfr(isolated / "celeba")
    data = get_data("celeba", data_dir=str(isolated / "celeba"), image_size=8)
    assert (data.n_train, data.n_test, data.n_y, data.image_shape) == (16, 7, 1, (8, 8, 3))
    x, y = all_batches(data.test_batches(2))
    np.testing.assert_array_equal(x, want["validation"][0])
    seen = []
    for rank in range(3):
        d = get_data("celeba", data_dir=str(isolated / "celeba"), image_size=8, rank=rank, size=3)
        got = list(one_pass(d, 2, 1))
        assert len(got) == 2  # 16 // 3 = 5 per rank -> 2 full batches each
        seen += [img.tobytes() for x, _ in got for img in x]
    assert len(seen) == len(set(seen)) == 12 and set(seen) <= rows(want["train"][0])


def test_tfrecords_pick_larger_resolution_and_pool(isolated):
    want = write_glow_tfr(isolated / "lsun", side=16)
    data = get_data("lsun", data_dir=str(isolated / "lsun"), image_size=8)
    x, _ = all_batches(data.test_batches(10))
    full = want["validation"][0].astype(np.int64)
    np.testing.assert_array_equal(x, full.reshape(-1, 8, 2, 8, 2, 3).sum(axis=(2, 4)) // 4)
    with pytest.raises(DataError, match="image_size 32: .*only up to 16 px"):
        get_data("lsun", data_dir=str(isolated / "lsun"), image_size=32)


def test_lsun_realnvp_crops_larger_records(isolated):
    want = write_glow_tfr(isolated / "lr", side=8, stored=(12, 10))
    data = get_data("lsun_realnvp", data_dir=str(isolated / "lr"), image_size=8)
    x, _ = all_batches(data.test_batches(10))
    np.testing.assert_array_equal(x, want["validation"][0][:, 2:10, 1:9])  # centre crop
    x, _ = all_batches(one_pass(data, 4))
    assert x.shape == (16, 8, 8, 3)


def test_tfrecords_shape_data_mismatch_is_refused(isolated):
    import tensorflow.compat.v1 as tf
    folder = isolated / "im"
    write_glow_tfr(folder, n_y=1000)
    feature = {"shape": tf.train.Feature(int64_list=tf.train.Int64List(value=[8, 8, 3])),
               "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\0" * 100])),
               "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
    path = folder / "validation" / "validation-r03-s-0001-of-0002.tfrecords"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    data = get_data("imagenet", data_dir=str(folder), image_size=8)
    with pytest.raises(DataError, match=r"validation-r03-s-0001-of-0002.tfrecords record 0: "
                                        r"'shape' \[8, 8, 3\] needs 192 bytes, 'data' has 100"):
        list(data.test_batches(2))


def test_tfrecords_bad_label_surfaces_from_the_prefetch_thread(isolated):
    write_glow_tfr(isolated / "c", n_y=3)  # labels up to 2, but celeba has n_y 1
    data = get_data("celeba", data_dir=str(isolated / "c"), image_size=8)
    with pytest.raises(DataError, match=r"tfrecords record \d+: label [12] out of range 0..0"):
        list(one_pass(data, 2))


def test_tfrecords_missing_shard_and_truncated_file(isolated):
    folder = isolated / "c"
    write_glow_tfr(folder)
    train_dir = folder / "train"
    last = train_dir / "train-r03-s-0002-of-0003.tfrecords"
    blob = last.read_bytes()
    last.write_bytes(blob[:-10])
    with pytest.raises(DataError, match="train-r03-s-0002-of-0003.tfrecords: record 3 claims"):
        get_data("celeba", data_dir=str(folder), image_size=8)
    os.remove(str(last))
    with pytest.raises(DataError, match=r"incomplete set of r03 shards: 2 of 3 present; missing "
                                        r"e.g. train-r03-s-0002-of-0003"):
        get_data("celeba", data_dir=str(folder), image_size=8)


# ---------------------------------------------------------------- image folder

def write_image_folder(folder, per_class=12, side=8):
    rng = np.random.RandomState(4)
    images = {}
    for c, name in enumerate(["cats", "dogs"]):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.randint(0, 256, (side, side, 3)).astype(np.uint8)
            path = folder / name / ("%02d.%s" % (i, "png" if i % 2 else "jpg"))
            Image.fromarray(img).save(str(path))
            images[str(path)] = (np.asarray(Image.open(str(path)).convert("RGB")), c)
    return images


def test_folder_classes_split_and_pixels(isolated):
    images = write_image_folder(isolated / "f")
    data = get_data("folder", data_dir=str(isolated / "f"), image_size=8, dal=0)
    assert (data.n_y, data.n_train, data.n_test, data.image_shape) == (2, 22, 2, (8, 8, 3))
    x, y = all_batches(data.test_batches(5))
    for k, name in enumerate(["cats", "dogs"]):  # every 10th in sorted order: 09.png
        want, label = images[str(isolated / "f" / name / "09.png")]
        np.testing.assert_array_equal(x[k], want)
        assert y[k] == label
    x, y = all_batches(one_pass(data, 11))
    train = [(img, c) for p, (img, c) in images.items() if not p.endswith("09.png")]
    assert rows(x) == rows([img for img, _ in train])


def test_folder_train_test_layout_crop_resize_and_grey(isolated):
    for split, n in (("train", 3), ("test", 2)):
        (isolated / "f" / split).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 10), (200, 100, 50)).save(str(isolated / "f" / split / ("%d.png" % i)))
    data = get_data("folder", data_dir=str(isolated / "f"), image_size=4, n_channels=1, dal=0)
    assert (data.n_y, data.n_train, data.n_test, data.image_shape) == (1, 3, 2, (4, 4, 1))
    x, _ = all_batches(data.test_batches(2))
    grey = np.asarray(Image.new("RGB", (1, 1), (200, 100, 50)).convert("L"))[0, 0]
    assert np.all(np.abs(x.astype(int) - int(grey)) <= 1)


def test_folder_corrupt_image_is_named(isolated):
    write_image_folder(isolated / "f")
    bad = isolated / "f" / "dogs" / "05.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="dogs/05.png: not a readable image"):
        get_data("folder", data_dir=str(isolated / "f"), image_size=8)
    with pytest.raises(DataError, match="image_size: required for problem folder"):
        get_data("folder", data_dir=str(isolated / "f"))
    with pytest.raises(DataError, match="problem folder: needs --data_dir"):
        get_data("folder", image_size=8)
    (isolated / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="empty: no .png/.jpg/.jpeg images below it; problem folder expects"):
        get_data("folder", data_dir=str(isolated / "empty"), image_size=8)


# ---------------------------------------------------------------- sharding, order, prefetch

@pytest.mark.parametrize("size", [2, 3])
def test_sharding_is_disjoint_and_complete(isolated, size):
    write_idx_dir(isolated / "m", n_train=50, n_test=13)
    ranks = [get_data("mnist", data_dir=str(isolated / "m"), dal=0, rank=r, size=size)
             for r in range(size)]
    batch = 4
    train = [list(one_pass(d, batch, 5)) for d in ranks]
    assert len(set(len(t) for t in train)) == 1  # every rank steps the same number of times
    seen = [img.tobytes() for t in train for x, _ in t for img in x]
    assert len(seen) == len(set(seen)) == size * ((50 // size) // batch) * batch
    test = [img.tobytes() for d in ranks for x, _ in d.test_batches(5) for img in x]
    x_all, _ = all_batches(get_data("mnist", data_dir=str(isolated / "m"), dal=0).test_batches(13))
    assert test == [img.tobytes() for img in x_all]  # disjoint, complete, in order


def test_train_order_deterministic_per_seed_and_epoch(isolated):
    write_idx_dir(isolated / "m", n_train=48)

    def labels_and_pixels(seed, epoch, dal):
        d = get_data("mnist", data_dir=str(isolated / "m"), seed=seed, dal=dal)
        return all_batches(one_pass(d, 8, epoch))

    a, b = labels_and_pixels(0, 1, 1), labels_and_pixels(0, 1, 1)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], labels_and_pixels(0, 2, 1)[0])
    assert not np.array_equal(a[0], labels_and_pixels(1, 1, 1)[0])
    assert not np.array_equal(labels_and_pixels(0, 1, 0)[0], labels_and_pixels(0, 2, 0)[0])


def test_train_stream_runs_across_passes_and_resumes_exactly(isolated):
    """train.py's epochs are stretches of one stream of passes (openai/glow's
    epoch is --n_train images, not a pass): a stretch starting anywhere is the
    same batches as that part of the whole stream, augmentation included."""
    write_idx_dir(isolated / "m", n_train=50)
    d = get_data("mnist", data_dir=str(isolated / "m"), seed=4, dal=1, rank=1, size=2)
    per_pass = 6  # 25 images per rank: 6 batches, 1 image dropped
    assert len(list(one_pass(d, 4, 1))) == per_pass
    whole = list(d.train_stream(4, 0, 3 * per_pass + 2))
    assert len(whole) == 3 * per_pass + 2
    for n_pass in (1, 2, 3):  # the stream is the passes end to end
        stretch = whole[(n_pass - 1) * per_pass:n_pass * per_pass]
        np.testing.assert_array_equal(np.concatenate([x for x, _ in stretch]),
                                      all_batches(one_pass(d, 4, n_pass))[0])
    for first, count in ((0, 4), (4, 5), (7, 11), (12, 8)):  # e.g. a run resumed at step `first`
        part = list(d.train_stream(4, first, count))
        assert len(part) == count
        for (x, y), (wx, wy) in zip(part, whole[first:first + count]):
            np.testing.assert_array_equal(x, wx)
            np.testing.assert_array_equal(y, wy)
    # each pass in its own order
    labels = [np.concatenate([y for _, y in whole[i * per_pass:(i + 1) * per_pass]]) for i in range(3)]
    assert not np.array_equal(labels[0], labels[1])


def test_init_batch_deterministic_per_seed_and_rank(isolated):
    write_idx_dir(isolated / "m", n_train=48)
    d0 = get_data("mnist", data_dir=str(isolated / "m"), rank=0, size=2)
    d1 = get_data("mnist", data_dir=str(isolated / "m"), rank=1, size=2)
    x, y = d0.init_batch(10)
    assert x.shape == (10, 32, 32, 1) and y.shape == (10,)
    np.testing.assert_array_equal(x, d0.init_batch(10)[0])
    assert not np.array_equal(x, d1.init_batch(10)[0])
    with pytest.raises(DataError, match=r"init batch size 49 \(train.py's --n_batch_init at its image size\): "
                                        r"the training set has only 48"):
        d0.init_batch(49)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_closing_generator_early_stops_the_thread(isolated):
    write_idx_dir(isolated / "m", n_train=200)
    data = get_data("mnist", data_dir=str(isolated / "m"))
    batches = one_pass(data, 2)
    next(batches)
    assert len(prefetch_threads()) == 1
    batches.close()
    assert prefetch_threads() == []
    batches = data.test_batches(1)
    next(batches)
    del batches
    assert prefetch_threads() == []


# ---------------------------------------------------------------- augmentation

def test_warp_integer_shift_repeats_edges():
    x = np.arange(2 * 5 * 6 * 1, dtype=np.uint8).reshape(2, 5, 6, 1)
    m = np.tile(np.eye(3), (2, 1, 1))
    m[0, 0, 2], m[1, 1, 2] = 2, -1  # image 0: sample 2 rows down; image 1: 1 column left
    out = augment_mod.warp(x, m)
    np.testing.assert_array_equal(out[0], x[0, np.minimum(np.arange(5) + 2, 4)])
    np.testing.assert_array_equal(out[1], x[1][:, np.maximum(np.arange(6) - 1, 0)])


def test_shift_augmentation_moves_a_dot_at_most_ten_percent():
    x = np.zeros((200, 32, 32, 1), np.uint8)
    x[:, 15:17, 15:17] = 255
    out = augment_mod.augment(x, augment_mod.SHIFTS, np.random.RandomState(0))
    r, c = np.mgrid[0:32, 0:32]
    w = out[..., 0].astype(float)
    mass = w.sum(axis=(1, 2))
    shift_r = (w * r).sum(axis=(1, 2)) / mass - 15.5
    shift_c = (w * c).sum(axis=(1, 2)) / mass - 15.5
    assert np.abs(shift_r).max() <= 3.2 + 0.5 and np.abs(shift_c).max() <= 3.2 + 0.5
    assert np.abs(shift_r).max() > 2.5  # shifts really span the +-10% range


def test_shear_and_rotation_ranges_are_degrees():
    """openai/glow's Keras 2.2.0 read both rotation_range and shear_range in
    degrees: --dal 2's shear of 0.02 is 0.02 degrees, not 0.02 radians."""
    aug = augment_mod.Augmentation(shift=0.0, rotation=0.0, zoom=0.0, shear=30.0, flip=False)
    m, _ = augment_mod._draw(aug, np.random.RandomState(0), 500, 32, 32)
    angles = np.rad2deg(np.arcsin(-m[:, 0, 1]))  # [[1, -sin(shear)], [0, cos(shear)]]
    np.testing.assert_allclose(m[:, 1, 1], np.cos(np.deg2rad(angles)))
    assert np.abs(angles).max() <= 30.0 and np.abs(angles).max() > 25.0
    aug = aug._replace(shear=0.0, rotation=15.0)
    m, _ = augment_mod._draw(aug, np.random.RandomState(0), 500, 32, 32)
    angles = np.rad2deg(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    assert np.abs(angles).max() <= 15.0 and np.abs(angles).max() > 12.0
    assert augment_mod.EXTRA.shear == 0.02 and augment_mod.EXTRA.rotation == 15.0


def test_dal_levels_per_problem():
    assert augment_mod.augmentation_for("cifar10", 0) is None
    assert augment_mod.augmentation_for("cifar10", 1) == augment_mod.SHIFTS
    assert augment_mod.augmentation_for("cifar10", 2) == augment_mod.EXTRA
    assert augment_mod.augmentation_for("mnist", 2) == augment_mod.SHIFTS  # no flips for digits
    assert augment_mod.augmentation_for("celeba", 1) is None  # openai/glow: none for TFRecords
    with pytest.raises(DataError, match="dal 2: problem celeba is not augmented"):
        augment_mod.augmentation_for("celeba", 2)
    with pytest.raises(DataError, match=r"dal 3: must be 0 \(none\), 1"):
        augment_mod.augmentation_for("cifar10", 3)


# ---------------------------------------------------------------- arguments

@pytest.mark.parametrize("kwargs,message", [
    (dict(problem="mnist", image_size=30), r"image_size 30: must be a power of two \(e.g. 32\)"),
    (dict(problem="mnist", image_size=64), "image_size 64: larger than the 32 px images"),
    (dict(problem="svhn"), "problem 'svhn': must be one of mnist, fashion-mnist, cifar10"),
    (dict(problem="mnist", rank=2, size=2), "rank 2: must be below size 2"),
    (dict(problem="mnist", seed=-1), "seed -1: must be an integer >= 0"),
    (dict(problem="cifar10", n_channels=1), "n_channels 1: problem cifar10 is RGB"),
    (dict(problem="mnist", n_train=41), r"n_train \(train.py.s --train_subset\) 41: must be 1..40"),
])
def test_bad_arguments(isolated, kwargs, message):
    write_idx_dir(isolated / "m")
    with pytest.raises(DataError, match=message):
        get_data(data_dir=str(isolated / "m"), **kwargs)


def test_batch_larger_than_rank_share(isolated):
    write_idx_dir(isolated / "m")
    data = get_data("mnist", data_dir=str(isolated / "m"), size=4, rank=3, n_train=30)
    assert data.n_train == 30 and len(list(one_pass(data, 7))) == 1
    with pytest.raises(DataError, match=r"batch_size 8: larger than this rank's share .*7 images"):
        one_pass(data, 8)


# ---------------------------------------------------------------- finding and downloading

def test_not_found_is_one_error_naming_files_places_and_remedy(isolated):
    with pytest.raises(DataError) as err:
        get_data("mnist", download=False)
    msg = str(err.value)
    for text in ["train-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]",
                 str(isolated / "system" / "mnist"), str(isolated / "home" / ".keras" / "datasets"),
                 str(isolated / "cwd" / "data" / "mnist"),
                 str(isolated / "home" / ".cache" / "glow-data" / "mnist"),
                 "downloads are off", "https://storage.googleapis.com/cvdf-datasets/mnist/",
                 "--data_dir"]:
        assert text in msg
    with pytest.raises(DataError, match="celeba is not downloaded automatically"):
        get_data("celeba")


def test_standard_location_is_used_without_data_dir(isolated):
    write_idx_dir(isolated / "cwd" / "data" / "mnist", n_train=8)
    data = get_data("mnist", download=False)
    assert data.n_train == 8 and data.location == str(isolated / "cwd" / "data" / "mnist")


def local_mirror(tmp, problem_files):
    """Remotes serving local files through file:// URLs, with their true size and SHA-256."""
    remotes = []
    for path in problem_files:
        blob = path.read_bytes()
        remotes.append(data_loaders.Remote(path.name, ("file://" + str(path),), len(blob),
                                           hashlib.sha256(blob).hexdigest()))
    return tuple(remotes)


def test_download_from_file_url_is_verified_and_used(isolated, monkeypatch):
    write_idx_dir(isolated / "mirror", n_train=8)
    files = sorted((isolated / "mirror").iterdir())
    monkeypatch.setitem(data_loaders.DOWNLOADS, "mnist", local_mirror(isolated, files))
    cache = isolated / "cache"
    data = get_data("mnist", cache_dir=str(cache))
    assert data.n_train == 8 and data.location == str(cache)
    assert sorted(os.listdir(str(cache))) == sorted(f.name for f in files)


def test_failed_download_is_reported_with_everything_else(isolated, monkeypatch):
    gone = data_loaders.Remote("train-images-idx3-ubyte.gz", ("file:///nonexistent/x.gz",), 10, "0" * 64)
    monkeypatch.setitem(data_loaders.DOWNLOADS, "mnist", (gone,))
    with pytest.raises(DataError) as err:
        get_data("mnist", cache_dir=str(isolated / "cache"))
    msg = str(err.value)
    assert "file:///nonexistent/x.gz: download failed" in msg and "--data_dir" in msg
    assert os.listdir(str(isolated / "cache")) == []


class FakeResponse(io.BytesIO):
    pass


@pytest.mark.parametrize("served,message", [
    (b"a" * 50, "got 50 bytes, the published size is 100 .download cut short"),
    (b"b" * 100, "SHA-256 [0-9a-f]+, the published one is"),
    (b"a" * 5000000, "got [0-9]+ bytes, the published size is 100"),
], ids=["short", "wrong-bytes", "too-long"])
def test_bad_download_is_rejected_and_deleted(tmp_path, served, message):
    remote = data_loaders.Remote("f.gz", ("https://example.invalid/f.gz",), 100,
                                 hashlib.sha256(b"a" * 100).hexdigest())
    with pytest.raises(DataError, match=message):
        data_loaders.fetch(remote, str(tmp_path), opener=lambda url, timeout: FakeResponse(served))
    assert os.listdir(str(tmp_path)) == []
    path = data_loaders.fetch(remote, str(tmp_path), opener=lambda url, timeout: FakeResponse(b"a" * 100))
    assert os.listdir(str(tmp_path)) == ["f.gz"] and open(path, "rb").read() == b"a" * 100


def test_plain_http_is_refused(tmp_path):
    remote = data_loaders.Remote("f", ("http://example.invalid/f",), 1, "0" * 64)
    with pytest.raises(DataError, match="refusing to download over 'http'"):
        data_loaders.fetch(remote, str(tmp_path), opener=lambda url, timeout: FakeResponse(b"x"))


def test_download_table_is_complete():
    for problem in ("mnist", "fashion-mnist", "cifar10"):
        for remote in data_loaders.DOWNLOADS[problem]:
            assert all(u.startswith("https://") for u in remote.urls)
            assert remote.size > 0 and len(remote.sha256) == 64
    assert set(data_loaders.PROBLEMS) >= {"mnist", "cifar10", "imagenet-oord", "imagenet",
                                          "celeba", "lsun_realnvp", "lsun", "folder"}


def test_every_format_in_the_registry_has_its_names_and_finds_nothing_in_an_empty_folder(tmp_path):
    for spec in data_loaders.REGISTRY.values():
        fmt = spec.fmt
        assert isinstance(fmt.EXPECTED, str) and isinstance(fmt.SEARCHED, bool) and fmt.CHANNELS in (1, 3, None)
        assert fmt.find(str(tmp_path)) is None and fmt.lacks(str(tmp_path)), spec.name
        assert callable(fmt.load)


# ---------------------------------------------------------------- the real Fashion-MNIST

@pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
                    reason="Debian package dataset-fashion-mnist is not installed (%s)" % FASHION_DIR)
def test_real_fashion_mnist_from_debian_package():
    data = get_data("fashion-mnist", data_dir=FASHION_DIR, dal=0, download=False)
    assert (data.n_train, data.n_test, data.image_shape, data.n_y) == (60000, 10000, (32, 32, 1), 10)
    x, y = all_batches(one_pass(data, 1000))
    assert x.shape == (60000, 32, 32, 1) and x.dtype == np.uint8
    assert 55.84 < x.mean() < 55.85  # 72.940 (the 28x28 mean) * 784 / 1024 = 55.845
    assert np.all(x[:, :2] == 0) and np.all(x[:, :, -2:] == 0)
    assert sorted(set(y.tolist())) == list(range(10)) and np.all(np.bincount(y) == 6000)
    xt, yt = all_batches(data.test_batches(5000))
    assert xt.shape == (10000, 32, 32, 1) and np.all(np.bincount(yt) == 1000)


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_found_without_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(str(tmp_path))
    data = get_data("fashion-mnist", n_train=10, download=False)
    assert data.location == FASHION_DIR and data.n_test == 10000
