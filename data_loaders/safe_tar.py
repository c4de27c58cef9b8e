"""Read chosen members of a tar archive into memory, never extracting anything.

Every member is checked first: only regular files and directories with a
relative name that has no '..' part are accepted; a symlink, hard link,
device, FIFO, absolute name or '..' anywhere in the archive is refused, since
no genuine data archive holds one.
"""
import tarfile
import zlib

from .errors import DataError


def _safe_name(member, path):
    """member.name without a leading './', or DataError if the member is unsafe."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise DataError("%s: refusing archive member %r (absolute or '..' path)" % (path, member.name))
    if not (member.isfile() or member.isdir()):
        raise DataError("%s: refusing archive member %r (links, devices and FIFOs are not "
                        "allowed)" % (path, member.name))
    return name


def read_members(path, wanted):
    """{name: bytes} of the `wanted` member names of the tar (optionally gzipped) at path."""
    wanted, found = set(wanted), {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = _safe_name(member, path)
                if name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError("%s: cannot read the archive (%s): it is damaged or truncated; delete "
                        "it and fetch it again" % (path, exc)) from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError("%s: archive lacks %s" % (path, ", ".join(missing)))
    return found
