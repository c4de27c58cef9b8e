"""Data for Glow (Kingma & Dhariwal 2018): openai/glow's problems and more, as uint8 image
batches [B, H, W, C] sharded over ranks, e.g. get_data("cifar10", rank=r, size=n).train_stream(...).

Problems and their files (any one layout; default px and classes are in REGISTRY):
  mnist, fashion-mnist  {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; 28x28, padded to 32x32
  cifar10  cifar-10-{python,binary}.tar.gz or cifar-10-batches-{py,bin}/{data_batch_1..5,test_batch}[.bin]
  imagenet32, imagenet64  train_data_batch_1..10.npz and val_data.npz
  imagenet-oord, imagenet, celeba, lsun_realnvp, lsun  openai/glow's TFRecords,
        {train,validation}/{split}-rNN-s-SSSS-of-TTTT.tfrecords
  folder  PNG/JPEG images under data_dir (required, as is image_size); see folder.py
Files are looked for in data_dir alone if given; else in /usr/share/datasets/<problem>,
~/.keras/datasets[/<problem>], ./data/<problem>, then cache_dir (~/.cache/glow-data/<problem>),
where mnist, fashion-mnist and cifar10 are downloaded (see fetch) if download=True.  If nothing
is found, one DataError lists the files, every folder looked in, and how to get them.  A smaller
image_size is average pooling by a power of two.  Nothing read is run or extracted: CIFAR pickles
build only numpy arrays, npz files load with allow_pickle=False, archives are read in memory,
headers are checked against the bytes present.

REGISTRY maps each problem to a Problem whose `fmt` is a format module (idx, cifar,
imagenet_npz, tfrecords, folder) with the names get_data and _find_data use:
  EXPECTED  str: the files it reads;  SEARCHED  bool: looked for in the standard folders
  CHANNELS  stored channels: 1, 3, or None (as asked, RGB by default)
  find(folder)  what load needs from the folder, or None;  lacks(folder)  str: what it lacks
  load(problem, found, image_size, n_channels) -> (train, test, n_y): sources (common.py)
                whose head(n) gives uint8 images average-pooled to image_size px.
"""
import collections
import hashlib
import http.client
import os
import tempfile
import urllib.parse
import urllib.request

import numpy as np

from . import cifar, folder, idx, imagenet_npz, tfrecords
from .augment import augmentation_for
from .common import DataError, check_int, pool_factor
from .data import Data

__all__ = ["PROBLEMS", "get_data", "Data", "DataError"]

Problem = collections.namedtuple("Problem", "name fmt image_size native n_y how_to_get")
Problem.__doc__ = """fmt: format module; image_size: default px (None: required); native: px of
the stored images if fixed; n_y: classes (None: from the files); how_to_get: for messages."""

_GLOW_TFR = "download https://storage.googleapis.com/glow-demo/data/%s-tfr.tar (openai/glow's README) and untar it"
_LSUN = "; pass the category folder (e.g. .../bedroom)"
_DOWNSAMPLED = ("download Imagenet%d_train_npz.zip (ImageNet 64: part1 and part2) and Imagenet%d_val_npz.zip "
                "from https://image-net.org/download-images.php (free account) and unzip them")
_AUTO = " (downloaded automatically)"
REGISTRY = collections.OrderedDict((p.name, p) for p in [
    Problem("mnist", idx, 32, 32, 10, "from https://storage.googleapis.com/cvdf-datasets/mnist/" + _AUTO),
    Problem("fashion-mnist", idx, 32, 32, 10, "apt install dataset-fashion-mnist, or from "
            "https://github.com/zalandoresearch/fashion-mnist" + _AUTO),
    Problem("cifar10", cifar, 32, 32, 10, "from https://www.cs.toronto.edu/~kriz/cifar.html" + _AUTO),
    Problem("imagenet32", imagenet_npz, 32, 32, 1000, _DOWNSAMPLED % (32, 32)),
    Problem("imagenet64", imagenet_npz, 64, 64, 1000, _DOWNSAMPLED % (64, 64)),
    Problem("imagenet-oord", tfrecords, 64, None, 1000, _GLOW_TFR % "imagenet-oord"),
    Problem("imagenet", tfrecords, 256, None, 1000, _GLOW_TFR % "imagenet"),
    Problem("celeba", tfrecords, 256, None, 1, _GLOW_TFR % "celeba"),
    Problem("lsun_realnvp", tfrecords, 64, None, 1, _GLOW_TFR % "lsun_realnvp" + _LSUN),
    Problem("lsun", tfrecords, 256, None, 1, _GLOW_TFR % "lsun" + _LSUN),
    Problem("folder", folder, None, None, None, "pass --data_dir with your images"),
])
PROBLEMS = tuple(REGISTRY)
SYSTEM_DATASETS = "/usr/share/datasets"  # Debian's dataset-* packages (e.g. dataset-fashion-mnist)
_CHUNK, _TIMEOUT = 1 << 20, 60  # download read size (bytes) and socket timeout (seconds)
Remote = collections.namedtuple("Remote", "name urls size sha256")
Remote.__doc__ = "A published file: its name, mirror URLs (tried in order), byte size and SHA-256."


def _remotes(bases, table):
    return tuple(Remote(name, tuple(b + name for b in bases), size, sha) for name, size, sha in table)


_MNIST = ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION = ("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/")
# Sizes and SHA-256 as published in tensorflow/datasets' url_checksums
# (mnist.txt, fashion_mnist.txt, cifar10.txt) and Keras' cifar10.load_data.
DOWNLOADS = {
    "mnist": _remotes(_MNIST, [
        ("train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        ("train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        ("t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        ("t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")]),
    "fashion-mnist": _remotes(_FASHION, [
        ("train-images-idx3-ubyte.gz", 26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz", 29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz", 4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz", 5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")]),
    # The binary version: the same images, and no pickle to unpickle.
    "cifar10": _remotes(("https://www.cs.toronto.edu/~kriz/",), [
        ("cifar-10-binary.tar.gz", 170052171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")]),
}


def get_data(problem, data_dir=None, image_size=None, n_train=None, n_test=None, dal=1, seed=0,
             rank=0, size=1, n_channels=None, download=True, cache_dir=None):
    """Find, check and load `problem`; return a Data for rank `rank` of `size`.

    image_size: px (power of two), default per problem; n_train / n_test: keep the first so
    many images of each split (default all); dal: augmentation level 0, 1 or 2; seed: fixes
    shuffling and augmentation; n_channels: None (the problem's own), 1 or 3 (3 tiles grey
    images, as openai/glow did); download: allow fetching into cache_dir.  Every argument is
    checked before any file is read or downloaded (n_train and n_test against the split sizes,
    after).  Raises DataError naming the bad one.
    """
    if problem not in REGISTRY:
        raise DataError("problem %r: must be one of %s" % (problem, ", ".join(PROBLEMS)))
    spec = REGISTRY[problem]
    seed, size, rank = check_int(seed, "seed", 0), check_int(size, "size", 1), check_int(rank, "rank", 0)
    if seed >= 2 ** 32:
        raise DataError("seed %d: must be below 2**32 (it seeds numpy's RandomState)" % seed)
    if rank >= size:
        raise DataError("rank %d: must be below size %d" % (rank, size))
    if image_size is None and spec.image_size is None:
        raise DataError("image_size: required for problem %s (a power of two, e.g. 32 or 64)" % spec.name)
    image_size = check_int(spec.image_size if image_size is None else image_size, "image_size", 1)
    if image_size & (image_size - 1):
        raise DataError("image_size %d: must be a power of two (e.g. 32)" % image_size)
    augmentation = augmentation_for(spec.name, dal)
    if n_channels not in (None, 1, 3) or isinstance(n_channels, bool):
        raise DataError("n_channels %r: must be 1, 3 or None (the problem's own)" % (n_channels,))
    if n_channels == 1 and spec.fmt.CHANNELS == 3:
        grey = [p.name for p in REGISTRY.values() if p.fmt.CHANNELS != 3]
        raise DataError("n_channels 1: problem %s is RGB; 1 channel is for %s" % (spec.name, ", ".join(grey)))
    if spec.native is not None:
        pool_factor(spec.native, image_size, "problem %s" % spec.name)
    found, location = _find_data(spec, data_dir, cache_dir, download)
    train, test, n_y = spec.fmt.load(spec, found, image_size, n_channels)
    splits = []  # the first n_train / n_test images of each (all if None), pooled to image_size
    for source, n, what, split in [(train, n_train, "n_train (train.py's --train_subset)", "training"),
                                   (test, n_test, "n_test", "test")]:
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= source.n):
            raise DataError("%s %r: must be 1..%d (the %s split of %s has %d images)" % (
                what, n, source.n, split, spec.name, source.n))
        splits.append(source.head(source.n if n is None else int(n)))
    image_shape = (image_size, image_size, n_channels or spec.fmt.CHANNELS or 3)
    return Data(spec.name, splits[0], splits[1], n_y, image_shape, augmentation, seed, rank, size, location)


def _find_data(problem, data_dir, cache_dir, download):
    """(what problem.fmt.load needs, the folder it is in), searched for as the module docstring says, or a DataError."""
    fmt, home = problem.fmt, os.path.expanduser("~")
    if data_dir is not None:
        found = fmt.find(data_dir) if os.path.isdir(data_dir) else None
        if found is None:
            raise DataError("--data_dir %s: %s; problem %s expects %s" % (
                data_dir, fmt.lacks(data_dir) if os.path.isdir(data_dir) else "no such folder", problem.name,
                fmt.EXPECTED))
        return found, data_dir
    if not fmt.SEARCHED:
        raise DataError("problem %s: needs --data_dir, a folder holding %s" % (problem.name, fmt.EXPECTED))
    keras = os.path.join(home, ".keras", "datasets")
    cache_dir = cache_dir or os.path.join(home, ".cache", "glow-data", problem.name)
    places = [os.path.join(SYSTEM_DATASETS, problem.name), os.path.join(keras, problem.name), keras,
              os.path.abspath(os.path.join("data", problem.name)), cache_dir]
    for place in places:
        found = fmt.find(place) if os.path.isdir(place) else None
        if found is not None:
            return found, place
    reason = "downloads are off"
    if download and problem.name in DOWNLOADS:
        try:
            for remote in DOWNLOADS[problem.name]:
                if not os.path.isfile(os.path.join(cache_dir, remote.name)):
                    fetch(remote, cache_dir)
            return fmt.find(cache_dir), cache_dir
        except DataError as exc:
            reason = str(exc)
    elif download:
        reason = "%s is not downloaded automatically" % problem.name
    lines = ["problem %s: data not found. Looked for %s in:" % (problem.name, fmt.EXPECTED)]
    lines += ["  %s (%s)" % (p, fmt.lacks(p) if os.path.isdir(p) else "no such folder") for p in places]
    raise DataError("\n".join(lines + ["Download: %s." % reason, "To get it: %s; put the files in one of those "
                                       "folders, or anywhere and pass --data_dir FOLDER." % problem.how_to_get]))


def fetch(remote, folder, opener=None):
    """Download `remote` into folder/remote.name, trying each mirror; return the path.  Each try
    goes (HTTPS only) to a unique temporary name, is checked against the published size and
    SHA-256, and only then renamed (atomic: ranks fetching at once never see a partial file);
    a partial or wrong download is deleted."""
    os.makedirs(folder, exist_ok=True)
    failures = []
    for url in remote.urls:
        try:
            return _fetch_one(url, remote, folder, opener or urllib.request.urlopen)
        except DataError as exc:
            failures.append(str(exc))
    raise DataError("could not download %s: %s" % (remote.name, "; ".join(failures)))


def _fetch_one(url, remote, folder, opener):
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("https", "file"):
        raise DataError("%s: refusing to download over %r (only https)" % (url, scheme))
    fd, tmp = tempfile.mkstemp(prefix="." + remote.name + ".", suffix=".part", dir=folder)
    try:
        digest, n_bytes = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with opener(url, timeout=_TIMEOUT) as response:
                    while n_bytes <= remote.size:  # stops once past the published size
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        digest.update(chunk)
                        out.write(chunk)
                        n_bytes += len(chunk)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise DataError("%s: download failed (%s)" % (url, exc)) from exc
        if n_bytes != remote.size:
            raise DataError("%s: got %d bytes, the published size is %d (%s)" % (
                url, n_bytes, remote.size, "download cut short" if n_bytes < remote.size else "not the published file"))
        if digest.hexdigest() != remote.sha256:
            raise DataError("%s: SHA-256 %s, the published one is %s" % (url, digest.hexdigest(), remote.sha256))
        os.replace(tmp, os.path.join(folder, remote.name))
        return os.path.join(folder, remote.name)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
