"""What a path is, before anything opens it: the input-safety checks every reader goes through.

Only regular files are read (symlinks followed). A FIFO, socket, device, broken symlink or
symlink loop is named by :func:`entry_kind` without being opened (so nothing blocks), skipped
with a warning built by :func:`skipped_note` when it is one entry among many, and a
:class:`~octseg.errors.DataError` when it is the file asked for (:func:`open_regular`).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

from octseg.errors import DataError

_MODE_KINDS = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"))


def entry_kind(path) -> str:
    """What ``path`` is, symlinks followed, without opening it: ``"file"`` (a regular file),
    ``"folder"``, ``"missing"``, or a description of anything else (``"FIFO"``, ``"socket"``,
    ``"broken symlink"``, ``"symlink loop"``, ``"unreadable: ..."``). Never blocks."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symlink" if os.path.islink(path) else "missing"
        return f"unreadable: {exc.strerror or exc}"
    except ValueError as exc:  # e.g. an embedded NUL byte
        return f"unreadable: {exc}"
    return _mode_kind(st.st_mode)


def _mode_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    for test, name in _MODE_KINDS:
        if test(mode):
            return name
    return "special file"


def dirent_kind(entry: os.DirEntry) -> str:
    """:func:`entry_kind` of a directory entry; a plain regular file costs no extra system call."""
    try:
        if entry.is_file(follow_symlinks=False):
            return "file"
        if entry.is_dir(follow_symlinks=False):
            return "folder"
    except OSError:
        pass
    return entry_kind(entry.path)


def regular_files(folder, hidden: bool = True) -> tuple[list[Path], list[str]]:
    """(regular files in ``folder`` sorted by name, ``"name (kind)"`` of the entries that are
    neither regular files nor folders). Folders are left out, symlinks followed, nothing is
    opened; ``hidden=False`` leaves out names starting with a dot. Raises OSError when the
    folder cannot be listed (the caller names it)."""
    files, odd = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not hidden and entry.name.startswith("."):
            continue
        kind = dirent_kind(entry)
        if kind == "folder":
            continue
        if kind == "file":
            files.append(Path(entry.path))
        else:
            odd.append(f"{entry.name} ({kind})")
    return files, odd


def find_named(root: Path, name: str, max_depth: int, skipped: Optional[list[str]] = None) -> list[Path]:
    """Every regular file called ``name`` under ``root``, at most ``max_depth`` path parts below
    it (``a/b/name`` is 3), sorted; hidden folders are not entered.

    Symlinked folders are followed, each real folder once (a link back up the tree is no loop);
    a ``name`` that is not a regular file and a folder that cannot be listed are appended to
    ``skipped`` as "path (what it is)" instead."""
    found = []
    seen: set[tuple[int, int]] = set()
    root_depth = len(Path(root).parts)

    def unreadable(exc: OSError) -> None:
        if skipped is not None:
            skipped.append(f"{exc.filename} (unreadable: {exc.strerror or exc})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        depth = len(Path(dirpath).parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < max_depth - 1 else []
        if name in filenames:
            p = Path(dirpath) / name
            kind = entry_kind(p)
            if kind == "file":
                found.append(p)
            elif skipped is not None:
                skipped.append(f"{p} ({kind})")
    return sorted(found)


def skipped_note(where, skipped: Sequence[str]) -> str:
    """The warning for entries that are not regular files (``skipped``: "name (kind)" strings)."""
    n = len(skipped)
    what = "1 entry that is not a regular file" if n == 1 else f"{n} entries that are not regular files"
    shown = ", ".join(skipped[:10]) + (" ..." if n > 10 else "")
    return f"{where}: skipped {what}: {shown}"


def not_folder(kind: str) -> str:
    """How a path of :func:`entry_kind` ``kind`` fails to be a folder ("does not exist", ...)."""
    return "does not exist" if kind == "missing" else "is a file, not a folder" if kind == "file" \
        else f"is not a folder ({kind})"


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading: anything else (FIFO, device, socket, broken link, loop)
    is a DataError before open() is called, and open() itself cannot block (O_NONBLOCK, then
    re-checked on the descriptor, in case the path was swapped in between)."""
    kind = entry_kind(path)
    if kind != "file":
        raise DataError(path, "no such file" if kind == "missing" else f"not a regular file ({kind})")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DataError(path, f"cannot open ({exc.strerror or exc})") from None
    try:
        kind = _mode_kind(os.fstat(fd).st_mode)
        if kind != "file":
            raise DataError(path, f"not a regular file ({kind})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
