"""Writing files so that a reader never sees half of one, and the one error for a failed write.

``write_atomic`` writes through a temporary file and ``os.replace``. A symlink is
followed: the file it points to is replaced, and the link stays a link.

Every write that fails for a reason the user can act on (a full disk, a
read-only place, a missing directory, a directory where a file should be)
becomes a ``WriteError``: one line, ``termlm: error: cannot write PATH: REASON``,
exit code 1. A closed pipe (EPIPE) is not an error: it stays a
``BrokenPipeError``, which the CLI edge turns into a quiet exit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from termlm.errors import TermlmError

WRITE_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES,
    errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.EBADF,
    errno.ETXTBSY, errno.ENAMETOOLONG, errno.ELOOP,
})
"""The errnos of a write that failed because of where it goes, not because of a bug."""


class WriteError(TermlmError):
    """An output that cannot be written (one line, exit 1)."""


def cannot_write(name: str, exc: OSError) -> WriteError:
    """The one error for a failed write: ``cannot write NAME: REASON``."""
    return WriteError(f"cannot write {name}: {exc.strerror or exc}")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and ``os.replace``.

    A symlink is followed (the target is replaced, the link kept); an existing
    file keeps its permission bits, a new one gets the usual ``0o666 & ~umask``.
    """
    real = Path(os.path.realpath(path))
    real.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fp:
            fp.write(text)
        os.chmod(tmp, _mode_for(real))
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
