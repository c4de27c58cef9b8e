"""moxing.file stand-in: exists and copy_parallel over the local disk.
`calls` records every call as (name, args...)."""
import os
import shutil

calls = []


def _local(url):
    if url.startswith("obs://"):
        root = os.environ.get("FAKE_OBS_ROOT")
        assert root, "set FAKE_OBS_ROOT to use the fake moxing with obs:// URLs"
        return os.path.join(root, url[len("obs://"):])
    return url


def exists(url):
    calls.append(("exists", url))
    return os.path.exists(_local(url))


def copy_parallel(src_url, dst_url):
    """Copy the contents of folder src_url into folder dst_url, as moxing does."""
    calls.append(("copy_parallel", src_url, dst_url))
    src, dst = _local(src_url), _local(dst_url)
    if not os.path.isdir(src):
        raise OSError("fake moxing: %s is not a folder" % src_url)
    for folder, _, files in os.walk(src):
        target = os.path.join(dst, os.path.relpath(folder, src))
        if not os.path.isdir(target):
            os.makedirs(target)
        for name in files:
            shutil.copyfile(os.path.join(folder, name), os.path.join(target, name))
