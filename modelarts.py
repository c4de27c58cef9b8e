"""Data in and results out for Huawei ModelArts training jobs, which pass OBS locations as `--data_url
obs://bucket/data/` and `--train_url obs://bucket/output/`. Training reads a local copy of the data and writes to a
local directory, which the chief rank copies to `train_url` at each checkpoint and at the end. Copies go through
`moxing` (ModelArts' file library), imported only for an object-store URL, so local runs need none of this.
sync_in does not coordinate processes: with several per node (one per NPU), give each its own `local_dir`.
"""
import os
import shutil


def _moxing(url):
    """moxing for an object-store URL (obs://, s3://), None for a local path; a RuntimeError if it is not importable."""
    if not url.startswith(("obs://", "s3://")):
        return None
    try:
        import moxing
    except ImportError as e:
        raise RuntimeError("%s is an object-store URL, copied with moxing, which ModelArts images provide and "
                           "which is not importable here (%s). Outside ModelArts, give a local path instead."
                           % (url, e)) from e
    return moxing


def sync_in(data_url, local_dir):
    """The path to read `data_url`'s data from: a local data_url itself (nothing is copied), an
    object-store one copied into `local_dir` with moxing.file.copy_parallel."""
    mox = _moxing(data_url)
    if mox is None:
        return data_url
    if not mox.file.exists(data_url):
        raise ValueError("--data_url %s: does not exist" % data_url)
    os.makedirs(local_dir, exist_ok=True)
    mox.file.copy_parallel(data_url, local_dir)
    return local_dir


def sync_out(local_logdir, train_url):
    """Copy `local_logdir` (logs, checkpoints, samples) to `train_url`, overwriting, so the last call
    leaves the latest state there. A local train_url equal to local_logdir needs no copy."""
    if not os.path.isdir(local_logdir):
        raise ValueError("sync_out: local log directory %s does not exist" % local_logdir)
    mox = _moxing(train_url)
    if mox is not None:
        mox.file.copy_parallel(local_logdir, train_url)
    elif os.path.abspath(train_url) != os.path.abspath(local_logdir):
        for folder, _, files in os.walk(local_logdir):
            target = os.path.join(train_url, os.path.relpath(folder, local_logdir))
            os.makedirs(target, exist_ok=True)
            for name in files:
                shutil.copy2(os.path.join(folder, name), os.path.join(target, name))
