"""Where a problem's files come from: --data_dir, standard folders, then a verified download.

Search order (see get_data): data_dir alone if given; else standard_dirs(), then the
cache folder, then (MNIST, Fashion-MNIST, CIFAR-10) a download into the cache.  A
download is fetched over HTTPS to a unique temporary name in the cache, checked
against its published size and SHA-256, and only then renamed to its real name (an
atomic rename, so ranks fetching at once never see a partial file); a partial or
wrong download is deleted.
"""
import collections
import hashlib
import http.client
import os
import tempfile
import urllib.parse
import urllib.request

from .common import DataError

SYSTEM_DATASETS = "/usr/share/datasets"  # Debian's dataset-* packages (e.g. dataset-fashion-mnist)
_CHUNK, _TIMEOUT = 1 << 20, 60  # download read size (bytes) and socket timeout (seconds)

Remote = collections.namedtuple("Remote", "name urls size sha256")
Remote.__doc__ = "A published file: its name, mirror URLs (tried in order), byte size and SHA-256."

_MNIST = ("https://storage.googleapis.com/cvdf-datasets/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION = ("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/")


def _remotes(bases, table):
    return tuple(Remote(name, tuple(b + name for b in bases), size, sha) for name, size, sha in table)


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


def standard_dirs(name):
    """The folders searched when no data_dir is given, in order (the cache comes after)."""
    keras = os.path.join(os.path.expanduser("~"), ".keras", "datasets")
    return [os.path.join(SYSTEM_DATASETS, name), os.path.join(keras, name), keras,
            os.path.abspath(os.path.join("data", name))]


def default_cache_dir(name):
    return os.path.join(os.path.expanduser("~"), ".cache", "glow-data", name)


def find_data(problem, data_dir, cache_dir, download):
    """(what problem.fmt.load needs, the folder it is in), or one DataError naming
    every folder looked in and what each lacks."""
    fmt = problem.fmt
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise DataError("--data_dir %s: no such folder (problem %s expects %s there)" % (
                data_dir, problem.name, fmt.EXPECTED))
        found = fmt.find(data_dir)
        if found is None:
            raise DataError("--data_dir %s: %s; problem %s expects %s" % (
                data_dir, fmt.lacks(data_dir), problem.name, fmt.EXPECTED))
        return found, data_dir
    if not fmt.SEARCHED:
        raise DataError("problem %s: needs --data_dir, a folder holding %s" % (problem.name, fmt.EXPECTED))
    places = standard_dirs(problem.name) + [cache_dir]
    for folder in places:
        found = fmt.find(folder) if os.path.isdir(folder) else None
        if found is not None:
            return found, folder
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
    raise DataError(_not_found(problem, places, reason))


def _not_found(problem, places, reason):
    lines = ["problem %s: data not found. Looked for %s in:" % (problem.name, problem.fmt.EXPECTED)]
    lines += ["  %s (%s)" % (folder, problem.fmt.lacks(folder) if os.path.isdir(folder) else "no such folder")
              for folder in places]
    lines.append("Download: %s." % reason)
    lines.append("To get it: %s; put the files in one of those folders, or anywhere and pass "
                 "--data_dir FOLDER." % problem.how_to_get)
    return "\n".join(lines)


def fetch(remote, folder, opener=None):
    """Download `remote` into folder/remote.name, trying each mirror; return the path."""
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
        with os.fdopen(fd, "wb") as out:
            n_bytes, sha256 = _copy(url, out, opener, remote.size)
        if n_bytes != remote.size:
            raise DataError("%s: got %d bytes, the published size is %d (%s)" % (
                url, n_bytes, remote.size,
                "download cut short" if n_bytes < remote.size else "not the published file"))
        if sha256 != remote.sha256:
            raise DataError("%s: SHA-256 %s, the published one is %s" % (url, sha256, remote.sha256))
        final = os.path.join(folder, remote.name)
        os.replace(tmp, final)
        return final
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _copy(url, out, opener, size):
    """Stream url into out; (bytes written, hex SHA-256). Stops past the expected size."""
    digest, n_bytes = hashlib.sha256(), 0
    try:
        with opener(url, timeout=_TIMEOUT) as response:
            while n_bytes <= size:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                n_bytes += len(chunk)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError("%s: download failed (%s)" % (url, exc)) from exc
    return n_bytes, digest.hexdigest()
