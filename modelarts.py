"""Data in and results out for Huawei ModelArts training jobs.

A ModelArts job passes its OBS locations as `--data_url obs://bucket/data/`
and `--train_url obs://bucket/output/`. Training reads a local copy of the
data and writes logs, checkpoints and samples to a local directory; the chief
rank copies that directory back to `train_url` at each checkpoint and at the
end. Copies go through `moxing` (ModelArts' file library), imported only when
an obs:// URL is given, so local runs need nothing of this.

With several processes per node (one per NPU), give each its own `local_dir`
(e.g. suffixed with the local rank) or let one process per node copy first:
sync_in does not coordinate processes.
"""
import os
import shutil

REMOTE_PREFIXES = ("obs://", "s3://")


def is_remote(url):
    """True for object-store URLs that moxing copies (obs://, s3://)."""
    return url.startswith(REMOTE_PREFIXES)


def require_moxing(url):
    """Import moxing, or RuntimeError saying why `url` needs it."""
    try:
        import moxing
    except ImportError as e:
        raise RuntimeError(
            "%s is an object-store URL, copied with moxing, which ModelArts images "
            "provide and which is not importable here (%s). Outside ModelArts, give "
            "a local path instead." % (url, e)) from e
    return moxing


def sync_in(data_url, local_dir):
    """Local directory holding the data of `data_url` -> path to read.

    A local data_url is used where it is (nothing is copied). An obs:// one
    is copied into `local_dir` with moxing.file.copy_parallel.
    """
    if not is_remote(data_url):
        return data_url
    mox = require_moxing(data_url)
    if not mox.file.exists(data_url):
        raise ValueError("--data_url %s: does not exist" % data_url)
    if not os.path.isdir(local_dir):
        os.makedirs(local_dir)
    mox.file.copy_parallel(data_url, local_dir)
    return local_dir


def sync_out(local_logdir, train_url):
    """Copy `local_logdir` (logs, checkpoints, samples) to `train_url`.

    Call on the chief rank at each checkpoint and at the end. Files already
    there are overwritten, so the last call leaves the latest state. A local
    train_url equal to local_logdir needs no copy.
    """
    if not os.path.isdir(local_logdir):
        raise ValueError("sync_out: local log directory %s does not exist" % local_logdir)
    if is_remote(train_url):
        require_moxing(train_url).file.copy_parallel(local_logdir, train_url)
    elif os.path.abspath(train_url) != os.path.abspath(local_logdir):
        _copy_tree(local_logdir, train_url)


def _copy_tree(src, dst):
    """Copy every file under src to the same relative path under dst."""
    for folder, _, files in os.walk(src):
        target = os.path.join(dst, os.path.relpath(folder, src))
        if not os.path.isdir(target):
            os.makedirs(target)
        for name in files:
            shutil.copy2(os.path.join(folder, name), os.path.join(target, name))
