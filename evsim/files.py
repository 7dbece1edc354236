"""Opening the files a user hands over, and writing the files evsim makes.

Every file evsim reads may be hostile and every file it writes must land
exactly where asked, so both go through here:

* :func:`open_regular` opens a *regular* file for reading. A named pipe, a
  device or a directory is refused before a byte is read (a FIFO would block
  forever), and the check is made on the opened descriptor, so the file cannot
  be swapped between the check and the read.
* :func:`atomic_write` writes through a temporary file created exclusively
  (``O_CREAT | O_EXCL``: it never follows a symlink and never reuses a name
  that exists) in the target's own directory, then renames it over the target
  in one step. An existing target (or a symlink in its place) is only replaced
  with ``force``; the rename replaces a symlink itself, never the file it
  points to. A missing or unwritable directory is one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tokenize
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from .errors import EvsimError


class FileError(EvsimError):
    """A path that cannot be read or written as asked."""


def _describe(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; otherwise one :class:`FileError` line.

    The descriptor is opened non-blocking (so a FIFO does not wait for a
    writer), checked with ``fstat``, then switched back to blocking reads.
    """
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileError(f"{what} {p}: no such file") from None
    except IsADirectoryError:
        raise FileError(f"{what} {p}: is a directory, not a file") from None
    except OSError as e:
        raise FileError(f"{what} {p}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError(f"{what} {p}: is {_describe(st.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def regular_size(path: str | os.PathLike, what: str = "file") -> int:
    """Size in bytes of a regular file (refusing anything else, as :func:`open_regular` does)."""
    with open_regular(path, what) as f:
        return os.fstat(f.fileno()).st_size


def check_writable_target(path: str | os.PathLike, force: bool, what: str = "output") -> Path:
    """Refuse an existing target without ``force`` and a missing or non-directory parent: one line each."""
    p = Path(path)
    if os.path.lexists(p):
        if os.path.isdir(p) and not os.path.islink(p):
            raise FileError(f"{what} {p}: is a directory")
        if not force:
            raise FileError(f"{what} {p} already exists (pass --force to replace it)")
    parent = p.parent
    if not parent.is_dir():
        problem = "is not a directory" if os.path.lexists(parent) else "does not exist"
        raise FileError(f"{what} {p}: directory {parent} {problem}")
    return p


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, force: bool = False, what: str = "output") -> Iterator[BinaryIO]:
    """Yield a binary file object; on success it becomes ``path`` in one rename, on failure it is removed.

    The temporary name is fresh (``.<name>.<random>.tmp`` beside the target)
    and created with ``O_EXCL``, so a file or symlink planted at a predictable
    name is never written through.
    """
    import tempfile

    p = check_writable_target(path, force, what)
    parent = p.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise FileError(f"{what} {p}: cannot write in {parent} ({e.strerror})") from None
    ok = False
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)          # mkstemp makes 0600; give the mode open() would
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # the check above may be stale by now: refuse again rather than replace a file that appeared
        if not force and os.path.lexists(p):
            raise FileError(f"{what} {p} already exists (pass --force to replace it)")
        try:
            os.replace(tmp, p)
        except OSError as e:
            if e.errno == errno.EISDIR:
                raise FileError(f"{what} {p}: is a directory") from None
            raise FileError(f"{what} {p}: cannot write ({e.strerror})") from None
        ok = True
    except OSError as e:
        raise FileError(f"{what} {p}: cannot write ({e.strerror})") from None
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def read_npy_header(f: BinaryIO, where: str, error: type[EvsimError], npz_hint: str = "") -> tuple:
    """``(shape, fortran_order, dtype, data offset)`` of the .npy stream ``f``, parsed before any data is read.

    The header is untrusted text, parsed by NumPy's own reader (no pickle, no eval of code); whatever is
    wrong with it becomes one ``error`` line starting with ``where``. ``npz_hint`` follows "not a .npy file"
    when the stream is a zip archive (an .npz given where a .npy is expected)."""
    try:
        magic = f.read(6)
        f.seek(0)
        if magic != b"\x93NUMPY":
            raise error(f"{where}: not a .npy file{npz_hint if magic[:2] == b'PK' else ''}")
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        with warnings.catch_warnings():          # "\e" in the untrusted header text is no news
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
            shape, fortran, dtype = read(f)
        return tuple(int(s) for s in shape), bool(fortran), dtype, f.tell()
    except EvsimError:
        raise
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError, RecursionError) as e:   # NumPy's parser raises these
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise error(f"{where}: cannot read as a .npy array ({detail})") from None
    except (OSError, EOFError, zipfile.BadZipFile):
        raise error(f"{where}: cannot read as a .npy array (truncated or unreadable)") from None
