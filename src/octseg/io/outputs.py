"""Where octseg writes: atomic files, and output folders that never take over a user's files.

Every folder octseg writes into on a user's behalf (``predict`` OUT, ``synth`` OUT, a training run
folder, the demo folder) is an :class:`OutputFolder`. It keeps a small record in ``OUT/.octseg/``:

* ``run.json``: which command wrote the folder, when, with which octseg, and whether it finished;
* ``files.txt``: every path the command wrote, appended *before* the file is written, so even a
  killed run leaves a complete list of what is octseg's;
* ``lock``: held with ``flock`` while a command writes, so two runs never mix their outputs.

A folder can also be written by several cooperating processes (``octseg predict --shard I/N``):
each claims a *part* of a *group* and keeps its own record in ``OUT/.octseg/parts/GROUP/PART/``;
parts of one group share the folder (a shared lock on ``lock``, an exclusive one on their own),
a plain claim excludes them, and another group in the folder counts as an earlier run.

The rules (README, "What octseg overwrites"):

* a new or empty folder is claimed;
* a folder holding anything octseg did not write there is a user's folder: refused unless
  ``overwrite=True`` (``--overwrite``), and even then only the files octseg writes are replaced;
* a folder written by an earlier octseg run: ``reuse=True`` continues it (``train --resume``, a
  re-run demo); otherwise it is refused unless ``overwrite=True``, which first deletes the earlier
  run's files (only those in its ``files.txt``), so the folder never mixes two runs;
* an output may never be, or contain, one of the command's inputs (``protect``), whatever the flags.

Single output files (``--json``, ``export OUT``, ``--preview``) follow :func:`check_output_file`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional

from octseg.errors import DataError, OctsegError

RECORD_DIR = ".octseg"
_UMASK = os.umask(0)
os.umask(_UMASK)
#: Prefix of octseg's temporary files: recognised as octseg's, so a killed run never makes a folder foreign.
TMP_PREFIX = ".octseg-tmp-"


# ----------------------------------------------------------------------------- errors and atomic files


def write_error(exc: OSError, path, what: str = "cannot write") -> DataError:
    """A one-line DataError for a failed write of ``path``; a full disk says so in plain words."""
    if exc.errno == errno.ENOSPC:
        return DataError(path, f"{what}: no space left on device")
    if exc.errno == errno.EDQUOT:
        return DataError(path, f"{what}: disk quota exceeded")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DataError(path, f"{what}: {exc.strerror or 'permission denied'} (a read-only or protected location)")
    return DataError(path, f"{what} ({exc.strerror or exc})")


def _put(fh, write: Callable[[BinaryIO], object]) -> None:
    """The one place octseg's output bytes reach a file (atomic writes, record and journal lines):
    a full or read-only disk shows up here as an OSError (and tests inject such faults here)."""
    write(fh)
    fh.flush()


def append_text(fh, text: str, path) -> None:
    """Append ``text`` to an open record file (``files.txt``, a manifest); failures name ``path``."""
    try:
        _put(fh, lambda f: f.write(text))
    except OSError as exc:
        raise write_error(exc, path) from None


def atomic_write(path, write: Callable[[BinaryIO], object], fsync: bool = True) -> Path:
    """Write through ``write(fh)`` into a temporary file beside ``path``, then rename it over ``path``:
    a crash or a full disk never leaves a half-written (or 0-byte) file under the final name, and
    a symlink at ``path`` is replaced, never written through. ``fsync=False`` skips the flush to
    disk for many small outputs (masks, overlays), where a power cut may lose the newest files
    but never leaves one half written. Failures raise :class:`DataError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make outputs private to this user
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            _put(fh, write)
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, OctsegError):
            raise write_error(exc, path) from None
        raise
    return path


def atomic_write_text(path, text: str, fsync: bool = True) -> Path:
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data), fsync=fsync)


# ----------------------------------------------------------------------------- single output files


def _is_octseg_file(path: Path) -> bool:
    """Whether an existing file carries octseg's mark (JSON ``written_by``, PNG ``Software``, ONNX producer,
    HTML ``generator``)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            doc = json.loads(path.read_text())
            return isinstance(doc, dict) and str(doc.get("written_by", "")).startswith("octseg")
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                return str(im.info.get("Software", "")).startswith("octseg")
        if suffix in (".html", ".htm"):
            with open(path, "rb") as fh:
                return b'<meta name="generator" content="octseg' in fh.read(4096)
        if suffix == ".onnx":
            with open(path, "rb") as fh:  # producer_name "octseg" sits in the first bytes of the proto
                return b"\x12\x06octseg" in fh.read(4096)
    except Exception:  # noqa: BLE001 - unreadable or not ours: either way not recognisably octseg's
        return False
    return False


def check_output_file(path, overwrite: bool = False, protect: Iterable = ()) -> Path:
    """Refuse to replace a file octseg did not write (``overwrite`` allows it), a folder, or an input."""
    path = Path(path)
    _check_not_input(path, protect, "output file")
    if path.is_dir():
        raise DataError(path, "is a folder; give the file to write")
    if path.exists() and not overwrite and not _is_octseg_file(path):
        raise DataError(path, "exists and was not written by octseg; not replacing it "
                              "(choose another name, or pass --overwrite)")
    return path


def _resolved(p) -> Path:
    try:
        return Path(p).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return Path(os.path.abspath(p))


def _check_not_input(out: Path, protect: Iterable, what: str) -> None:
    o = _resolved(out)
    for p in protect:
        if not p:
            continue
        i = _resolved(p)
        if o == i:
            raise DataError(out, f"{what} is the input {p}; octseg never writes over its inputs")
        if o in i.parents:
            raise DataError(out, f"{what} contains the input {p}; octseg never writes over its inputs "
                                 f"(choose a folder outside it)")


# ----------------------------------------------------------------------------- output folders


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _is_main_process() -> bool:
    """False in the extra ranks of a distributed run, which share the folder with rank 0."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


class OutputFolder:
    """One command's claim on an output folder (see the module docstring for the rules).

    ``whole=True`` (training runs, the demo): everything in the folder belongs to the run once it is
    claimed (Lightning writes there too), so no file list is kept. Otherwise every written file is
    recorded through :meth:`file` before it is written.

    >>> with OutputFolder(out, "predict", overwrite=args.overwrite, protect=[args.input]) as folder:
    ...     atomic_write(folder.file("masks/a.png"), ...)
    """

    def __init__(self, path, command: str, *, overwrite: bool = False, reuse: bool = False, whole: bool = False,
                 protect: Iterable = (), legacy: Callable[[Path], bool] = lambda p: False, keep_run_info: bool = False,
                 part: Optional[tuple[str, str]] = None):
        self.path = Path(path)
        self.part = part  # (group, name): one of several processes writing the folder together
        self.command = command
        self.overwrite, self.reuse, self.whole = bool(overwrite), bool(reuse), bool(whole)
        self.protect = [p for p in protect if p]
        self.legacy = legacy  # recognises a folder written by an octseg from before these records
        self.keep_run_info = keep_run_info  # an addition (a report) leaves the folder's run.json as it was
        self._lock_fh = None
        self._files_fh = None
        self._recorded: set[str] = set()
        #: when a list, :meth:`file` appends every path it hands out (``predict``: one input's outputs)
        self.touched: Optional[list[str]] = None

    # -- paths of the record
    @property
    def record(self) -> Path:
        return self.path / RECORD_DIR

    @property
    def own_record(self) -> Path:
        """This claim's record: the folder's, or its part's (``.octseg/parts/GROUP/PART``)."""
        return self.record if self.part is None else self.record / "parts" / self.part[0] / self.part[1]

    def _run_info(self) -> Optional[dict]:
        try:
            doc = json.loads((self.own_record / "run.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _recorded_files(self, record: Optional[Path] = None) -> list[str]:
        try:
            text = ((record or self.own_record) / "files.txt").read_text()
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.strip()]

    def _part_records(self) -> dict[tuple[str, str], Path]:
        """(group, part) -> record folder of every part that has written into the folder."""
        found = {}
        try:
            for g in sorted((self.record / "parts").iterdir()):
                for q in sorted(g.iterdir()) if g.is_dir() else ():
                    if q.is_dir():
                        found[(g.name, q.name)] = q
        except OSError:
            pass
        return found

    def part_info(self) -> dict[tuple[str, str], dict]:
        """(group, part) -> the part's ``run.json`` (status, pid, argv) for every part record."""
        out = {}
        for key, rec in self._part_records().items():
            try:
                doc = json.loads((rec / "run.json").read_text())
            except (OSError, ValueError):
                doc = {}
            out[key] = doc if isinstance(doc, dict) else {}
        return out

    # -- claiming
    def __enter__(self) -> "OutputFolder":
        _check_not_input(self.path, self.protect, "output folder")
        if self.path.exists() and not self.path.is_dir():
            raise DataError(self.path, "exists and is not a folder")
        if not _is_main_process() and self.part is None:
            return self  # rank 0 holds the claim and the lock
        if self.path.is_dir():
            self._check_and_reset(dry=True)  # a refused folder gets nothing, not even the record
        try:
            self.own_record.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.path, "cannot create the output folder") from None
        self._lock()
        try:
            self._check_and_reset()  # again under the lock
            self._write_run_info("running")
            if not self.whole:
                self._files_fh = open(self.own_record / "files.txt", "a", encoding="utf-8")
                self._recorded = set(self._recorded_files())
        except BaseException:
            self._unlock()
            raise
        return self

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, the rules still hold
            return
        # parts of a group share the folder's lock and hold their own; a plain claim holds the folder's
        locks = [(self.record / "lock", fcntl.LOCK_EX if self.part is None else fcntl.LOCK_SH)]
        if self.part is not None:
            locks.append((self.own_record / "lock", fcntl.LOCK_EX))
        held = []
        for path, mode in locks:
            fh = open(path, "a+")
            try:
                fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                for h in held:
                    h.close()
                info = self._run_info() or {}
                who = (f"pid {info.get('pid', '?')}, octseg {info.get('command', '?')} since "
                       f"{info.get('started', '?')}") if path.parent == self.own_record else "another command"
                raise DataError(self.path, f"is being written by another octseg process ({who}); wait for it to "
                                           f"finish or choose another folder") from None
            held.append(fh)
        self._lock_fh = held

    def _unlock(self) -> None:
        if self._lock_fh is not None:
            for fh in self._lock_fh:
                fh.close()  # closing releases the flock
            self._lock_fh = None

    def _foreign(self, ours: set[str]) -> list[str]:
        """Files (relative paths) in the folder that octseg did not record as its own."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            rel_dir = os.path.relpath(dirpath, self.path)
            if rel_dir == RECORD_DIR:
                dirnames[:] = []
                continue
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]  # a killed volume write's folder
            for name in filenames:
                rel = os.path.normpath(os.path.join(rel_dir, name))
                if name.startswith(TMP_PREFIX) or rel in ours:
                    continue
                found.append(rel)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != RECORD_DIR]
        return sorted(found)

    def _check_and_reset(self, dry: bool = False) -> None:
        """Refuse a user's folder or an earlier run's output (see the rules); with ``overwrite``,
        remove the earlier run's files unless ``dry``."""
        info = self._run_info()
        earlier = info is not None or self.legacy(self.path)
        if self.whole:
            if earlier:
                if info is not None and info.get("command") != self.command:
                    raise DataError(self.path, f"holds the output of octseg {info.get('command')}, not of "
                                               f"{self.command}; choose another folder")
                return  # the run folder is ours; the command decides (e.g. train needs --resume)
            foreign = self._foreign(set())
            if foreign and not self.overwrite:
                raise DataError(self.path, _foreign_message(foreign))
            return
        if self.part is not None or self._part_records():
            return self._check_parts(dry)
        ours = set(self._recorded_files())
        foreign = self._foreign(ours)
        if foreign and not self.overwrite:
            raise DataError(self.path, _foreign_message(foreign))
        if info is not None and self.reuse and info.get("command") != self.command:
            raise DataError(self.path, f"holds the output of octseg {info.get('command')}, not of {self.command}; "
                                       f"choose another folder")
        if info is not None and self.reuse and not dry:
            self._remove_temporary()  # what a killed run was writing when it stopped
        if info is not None and ours and not self.reuse:
            if not self.overwrite:
                state = "finished" if info.get("status") == "finished" else f"{info.get('status', 'unfinished')}"
                raise DataError(self.path, f"holds the {state} output of an earlier octseg {info.get('command')} "
                                           f"({len(ours)} files, {info.get('started', '?')}); pass --overwrite to "
                                           f"replace it, or choose another folder")
            if not dry:
                self._remove_earlier(ours)

    def _check_parts(self, dry: bool) -> None:
        """The rules where parts are involved: a part's siblings (same group) are not earlier output;
        the folder's own record, other groups and this part's own earlier files are, and only
        ``overwrite`` replaces them (``reuse`` continues this part's own)."""
        parts = self._part_records()
        top = set(self._recorded_files(self.record))
        every = set(top)
        for rec in parts.values():
            every.update(self._recorded_files(rec))
        foreign = self._foreign(every)
        if foreign and not self.overwrite:
            raise DataError(self.path, _foreign_message(foreign))
        mine = self.part
        earlier: dict[str, Path] = {}  # description -> record folder
        top_info = read_json_object(self.record / "run.json")
        if top and top_info is not None and not (mine is None and self.reuse):
            earlier[f"octseg {top_info.get('command')} ({top_info.get('started', '?')})"] = self.record
        for (group, name), rec in parts.items() if not (mine is None and self.reuse) else ():
            if mine is not None and group == mine[0] and (name != mine[1] or self.reuse):
                continue  # a sibling, or this part continued
            if self._recorded_files(rec):
                earlier[f"part {name} of {group}"] = rec
        if not earlier:
            return
        if not self.overwrite:
            shown = ", ".join(list(earlier)[:3]) + (" ..." if len(earlier) > 3 else "")
            raise DataError(self.path, f"holds the output of an earlier octseg run ({shown}); pass --overwrite to "
                                       f"replace it, or choose another folder")
        if dry:
            return
        for rec in earlier.values():
            self._remove_earlier(set(self._recorded_files(rec)), rec)
            if rec != self.record and rec != self.own_record:
                import shutil

                shutil.rmtree(rec, ignore_errors=True)
        if self.part is None:
            import shutil

            shutil.rmtree(self.record / "parts", ignore_errors=True)

    def _remove_temporary(self) -> None:
        """Delete temporary files and folders (``TMP_PREFIX``) a killed run left; never with parts,
        whose siblings may be writing theirs."""
        import shutil

        for dirpath, dirnames, filenames in os.walk(self.path):
            if os.path.relpath(dirpath, self.path) == RECORD_DIR:
                dirnames[:] = []
                continue
            for d in [d for d in dirnames if d.startswith(TMP_PREFIX)]:
                shutil.rmtree(os.path.join(dirpath, d), ignore_errors=True)
                dirnames.remove(d)
            for name in filenames:
                if name.startswith(TMP_PREFIX):
                    Path(dirpath, name).unlink(missing_ok=True)

    def _remove_earlier(self, ours: set[str], record: Optional[Path] = None) -> None:
        """Delete the earlier run's files (only those it recorded) and the folders they leave empty."""
        for dirpath, _, filenames in os.walk(self.path) if self.part is None else ():  # a killed run's temporary
            for name in filenames:  # files (never with parts: a sibling's may be in flight)
                if name.startswith(TMP_PREFIX):
                    Path(dirpath, name).unlink(missing_ok=True)
        dirs = set()
        for rel in ours:
            p = self.path / rel
            try:
                if p.is_symlink() or p.is_file():
                    p.unlink()
            except FileNotFoundError:
                pass  # removed meanwhile by a sibling part
            except OSError as exc:
                raise write_error(exc, p, "cannot remove the earlier output") from None
            dirs.update(q for q in Path(rel).parents if str(q) != ".")
        for d in sorted(dirs, key=lambda q: -len(q.parts)):
            try:
                (self.path / d).rmdir()
            except OSError:
                pass  # not empty (a user's file) or gone
        ((record or self.own_record) / "files.txt").unlink(missing_ok=True)

    def _write_run_info(self, status: str) -> None:
        if self.keep_run_info:
            return
        info = self._run_info() if status != "running" else None
        doc = dict(info or {}, command=self.command, status=status, pid=os.getpid(),
                   argv=sys.argv[1:], octseg_version=_version())
        doc.setdefault("started", _now())
        if status != "running":
            doc["ended"] = _now()
        if self.part is not None:
            doc["part"] = list(self.part)
        atomic_write_text(self.own_record / "run.json", json.dumps(doc, indent=1) + "\n", fsync=False)

    # -- writing
    def file(self, rel) -> Path:
        """Record ``rel`` (a path inside the folder) as octseg's and return its full path (parents made).

        Raises if the path would leave the folder or land on one of the command's inputs."""
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts:
            raise DataError(self.path / rel_path, "output path leaves the output folder")
        full = self.path / rel_path
        _check_not_input(full, self.protect, "output")
        key = os.path.normpath(str(rel_path))
        if self.part is not None and key not in self._recorded:
            other = self._sibling_with(key)  # never write over a sibling part's file
            if other is not None:
                raise DataError(full, f"was written by part {other[1]} of {other[0]}; two parts must not "
                                      f"write the same output (predict these inputs with one process)")
        if self._files_fh is not None and key not in self._recorded:
            append_text(self._files_fh, key + "\n", self.own_record / "files.txt")
            self._recorded.add(key)
        if self.touched is not None:
            self.touched.append(key)
        try:
            full.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, full.parent, "cannot create the folder") from None
        return full

    def _sibling_with(self, key: str) -> Optional[tuple[str, str]]:
        """The other part whose record lists ``key``, or None. Their ``files.txt`` only grow: each is
        read on from where the last call stopped (bounded work over a run, however many files)."""
        seen = self.__dict__.setdefault("_sibling_files", {})  # record -> [bytes read, set of keys, partial line]
        for other, rec in self._part_records().items():
            if other == tuple(self.part):
                continue
            state = seen.setdefault(rec, [0, set(), b""])
            try:
                with open(rec / "files.txt", "rb") as fh:
                    if os.fstat(fh.fileno()).st_size < state[0]:  # started over (a rerun of that part)
                        state[:] = [0, set(), b""]
                    fh.seek(state[0])
                    data = fh.read()
            except OSError:  # none (yet, or removed by a rerun of that part)
                state[:], data = [0, set(), b""], b""
            if data:
                state[0] += len(data)
                *lines, state[2] = (state[2] + data).split(b"\n")
                state[1].update(ln.decode("utf-8", "replace").strip() for ln in lines)
            if key in state[1]:
                return other
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._files_fh is not None:
            self._files_fh.close()
            self._files_fh = None
        if self._lock_fh is not None:
            try:
                self._write_run_info("finished" if exc_type is None else "failed")
            except OctsegError:
                pass  # e.g. the disk is full: the run's own error is the one to report
        self._unlock()


def read_json_object(path: Path) -> Optional[dict]:
    """A JSON object from ``path``, or None when the file is missing, unreadable or not an object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _foreign_message(foreign: list[str]) -> str:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return (f"holds {len(foreign)} file(s) octseg did not write ({shown}); octseg does not write into a "
            f"folder of yours: choose a new or empty folder, or pass --overwrite to write beside them")


def _version() -> str:
    from octseg import __version__

    return __version__



def json_default(o):
    """``json.dumps(..., default=json_default)``: NumPy scalars as numbers, paths as strings."""
    import numpy as np

    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
