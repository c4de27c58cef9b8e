"""Where a problem's files are found: --data_dir, standard folders, then a verified download."""
import os

from . import download as downloads
from . import imagenet_npz
from .errors import DataError
from .problems import find, missing_idx

SYSTEM_DATASETS = "/usr/share/datasets"  # Debian's dataset-* packages (e.g. dataset-fashion-mnist)


def standard_dirs(name):
    """The folders searched when no data_dir is given, in order (the cache comes after)."""
    keras = os.path.join(os.path.expanduser("~"), ".keras", "datasets")
    return [os.path.join(SYSTEM_DATASETS, name), os.path.join(keras, name), keras,
            os.path.abspath(os.path.join("data", name))]


def default_cache_dir(name):
    return os.path.join(os.path.expanduser("~"), ".cache", "glow-data", name)


def find_data(problem, data_dir, cache_dir, download, opener=None):
    """(what the loader needs, folder it came from), or one DataError saying where we looked."""
    if data_dir is not None:
        return _in_data_dir(problem, data_dir), data_dir
    if problem.kind == "folder":
        raise DataError("problem folder: needs --data_dir, a folder of PNG/JPEG images")
    places = standard_dirs(problem.name) + [cache_dir]
    for folder in places:
        found = find(problem, folder)
        if found is not None:
            return found, folder
    reason = "downloads are off"
    if download and problem.name in downloads.DOWNLOADS:
        try:
            _fetch_missing(problem.name, cache_dir, opener)
            return find(problem, cache_dir), cache_dir
        except DataError as exc:
            reason = str(exc)
    elif download:
        reason = "%s is not downloaded automatically" % problem.name
    raise DataError(_not_found(problem, places, reason))


def _in_data_dir(problem, data_dir):
    if not os.path.isdir(data_dir):
        raise DataError("--data_dir %s: no such folder (problem %s expects %s there)" % (
            data_dir, problem.name, ", ".join(problem.expected)))
    found = find(problem, data_dir)
    if found is None:
        raise DataError("--data_dir %s: %s; problem %s expects %s" % (
            data_dir, _status(problem, data_dir), problem.name, _expected(problem)))
    return found


def _fetch_missing(name, cache_dir, opener):
    for remote in downloads.DOWNLOADS[name]:
        if not os.path.isfile(os.path.join(cache_dir, remote.name)):
            downloads.fetch(remote, cache_dir, opener)


def _expected(problem):
    joiner = " or " if problem.kind == "cifar" else ", "
    return joiner.join(problem.expected)


def _status(problem, folder):
    if not os.path.isdir(folder):
        return "no such folder"
    if problem.kind == "idx":
        return "lacks " + ", ".join(missing_idx(folder))
    if problem.kind == "npz":
        names = imagenet_npz.TRAIN + [imagenet_npz.VAL]
        return "lacks " + ", ".join(n for n in names if not os.path.isfile(os.path.join(folder, n)))
    return "no matching files"


def _not_found(problem, places, reason):
    lines = ["problem %s: data not found. Looked for %s in:" % (problem.name, _expected(problem))]
    lines += ["  %s (%s)" % (folder, _status(problem, folder)) for folder in places]
    lines.append("Download: %s." % reason)
    lines.append("To get it: %s; put the files in one of those folders, or anywhere and pass "
                 "--data_dir FOLDER." % problem.how_to_get)
    return "\n".join(lines)
