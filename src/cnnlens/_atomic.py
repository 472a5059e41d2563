"""Write files and folders so that a crash never leaves a half-written result, and never lose what cnnlens
did not write.

Files go to a temporary sibling and are moved into place with :func:`os.replace`, which is atomic on
POSIX. Output folders go through one helper, :func:`output_dir`, which every writing command uses:

- the folder is built under a temporary sibling ``.NAME.PID.XXXX.tmp`` and swapped in whole, with one
  atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux): a kill at any moment leaves the old folder or
  the new one, never a mix;
- an existing folder is replaced only with ``overwrite``, only when cnnlens wrote it (its
  :data:`MARKER` file, or for outputs older than markers their own manifest), only when it holds the
  same kind of output, and only when it holds nothing cnnlens did not write; an empty folder may be used;
- never a folder that is, or holds, one of the command's inputs (the run folder, data, masks), nor one
  inside a data folder cnnlens did not write (:class:`DataInput`: the user's image folder);
- temporary files and folders left by a killed process (its PID no longer runs) are removed by the next
  write to the same place.

Refusals raise :class:`OutputRefused`, a place that cannot be written raises :class:`CannotWrite`; both say
what to do, and the CLI prints them as plain errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cnnlens._types import PathArg

#: The file cnnlens writes into every output folder it creates: ``{"cnnlens", "kind", "version", "files"}``.
MARKER = ".cnnlens-output.json"
MARKER_VERSION = 1
#: errnos that mean "the disk is full" rather than "this place is wrong".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
#: errnos of a write refused by the place itself (permissions, a read-only file system).
UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, *DISK_FULL)


class OutputRefused(FileExistsError, ValueError):
    """cnnlens will not write to this output folder; the message says why and what to pass instead.

    A :class:`FileExistsError` (something is in the way) and a :class:`ValueError` (a bad ``--out``).
    """


class CannotWrite(OSError):
    """The output place cannot be written (no permission, a read-only file system, a full disk).

    ``str()`` is ``"cannot write to PATH: reason"``; ``disk_full`` tells a full disk apart.
    """

    def __init__(self, path: PathArg, reason: OSError | str, message: str | None = None) -> None:
        why = (reason.strerror or str(reason)) if isinstance(reason, OSError) else reason
        super().__init__(message or f"cannot write to {path}: {why}")
        self.reason = why
        self.errno = reason.errno if isinstance(reason, OSError) else None
        self.filename = str(path)
        self.disk_full = self.errno in DISK_FULL

    def __str__(self) -> str:  # OSError's own would print "[Errno N] None: PATH"
        return str(self.args[0])

    def with_errno(self, code: int | None) -> CannotWrite:
        self.errno, self.disk_full = code, code in DISK_FULL
        return self


@dataclass(frozen=True)
class OutputKind:
    """What one kind of cnnlens output folder looks like.

    Attributes:
        what: words for messages ("a report").
        manifest: a JSON file (relative path) that identifies this kind in folders written before
            :data:`MARKER` existed, together with ``keys``, keys that JSON object must have.
        writes: glob patterns of the top-level entries this kind writes (for folders without a marker).
    """

    what: str
    manifest: str
    keys: tuple[str, ...]
    writes: tuple[str, ...]


#: Every kind of folder cnnlens writes. A sub-folder that is itself a cnnlens output (``RUN/eval``,
#: ``RUN/report``) counts as written by cnnlens inside any of them.
KINDS: dict[str, OutputKind] = {
    "run": OutputKind("a training run", "config.json", ("version", "model", "train"),
                      ("config.json", "weights.safetensors", "checkpoint.pt", "history.csv", "curves.png", "split.json",
                       "tensorboard", "train.log")),
    "evaluation": OutputKind("an evaluation", "metrics.json", ("version", "accuracy", "confusion"),
                             ("metrics.json", "per_class.csv", "confusion.csv", "confusion_normalized.csv",
                              "predictions.csv", "confusion.png", "class_distribution.png")),
    "explain": OutputKind("explanations", "index.json", ("version", "images", "methods"),
                          ("index.json", "maps.npz", "img*_*.png", "img*_*.np[yz]", "overview-*.png", "overview-*.np[yz]")),
    "faithfulness": OutputKind("a faithfulness evaluation", "faithfulness.json", ("version", "rows", "settings"),
                               ("faithfulness.json", "faithfulness.csv", "per_image.csv", "randomization.csv", "*.png",
                                "*.npz")),
    "report": OutputKind("a report", "data/report.json", ("version", "sections"), ("index.html", "figures", "data", "arrays")),
    "synth": OutputKind("synthetic faces", "synth.json", ("generator", "version"), ("faces.csv", "faces.masks.npy", "synth.json")),
    "demo": OutputKind("a demo", "run/config.json", ("model", "train"), ("data", "run", "report")),
    "shards": OutputKind("a dataset job (Parquet shards)", "manifest.json", ("format", "shard_size", "work"),
                         ("manifest.json", "shards")),
}

#: ``.NAME.PID.XXXX.tmp`` / ``.old`` (and ``.NAME.XXXX.tmp`` from before PIDs were in the name).
_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.(?P<end>tmp|old)$")


# ---------------------------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_path(path: PathArg) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, on error delete it.

    A temporary file of the same name left by a killed process is removed first. A write refused by the
    place (permissions, read-only, disk full) raises :class:`CannotWrite`; ``path`` is then as before.

    >>> with atomic_path("model.safetensors") as tmp:
    ...     save_file(tensors, tmp)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CannotWrite(path, err) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _writing(path, tmp_path):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results must be readable like any file
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: PathArg, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: PathArg, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def _writing(path: Path, tmp: Path) -> Iterator[None]:
    """Turn an OSError of writing ``tmp`` (or of a full disk, wherever) into :class:`CannotWrite` about ``path``."""
    try:
        yield
    except CannotWrite as err:
        if err.filename is not None and err.filename != str(path) and _within(Path(err.filename), tmp):
            raise CannotWrite(path, err.reason).with_errno(err.errno) from err  # name the output, not its temp
        raise
    except OSError as err:
        inside = err.filename is None or _within(Path(os.fsdecode(err.filename)), tmp)
        if err.errno in DISK_FULL or (err.errno in UNWRITABLE and inside):
            raise CannotWrite(path, err) from err
        raise


def _within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------ folders


@contextlib.contextmanager
def output_dir(path: PathArg, *, kind: str, overwrite: bool = False, inputs: Iterable[PathArg | None] = (),
               files: Sequence[str] | None = None) -> Iterator[Path]:
    """Build the output folder ``path`` under a temporary sibling; swap it in whole when the block succeeds.

    ``path`` is checked first with :func:`check_output` (and again just before the swap); an existing
    folder stays exactly as it was until the new one is complete, and also when the block raises. The new
    folder gets a :data:`MARKER` naming ``kind`` and its entries (``files``, default: what the block
    wrote), so a later run recognises it as replaceable.

    >>> with output_dir("runs/fer/eval", kind="evaluation", inputs=["runs/fer"]) as tmp:
    ...     (tmp / "metrics.json").write_text("{}")
    """
    path = Path(path)
    inputs = list(inputs)
    remove_stale(path)  # first: a killed swap's old folder is put back before it is judged
    check_output(path, kind=kind, overwrite=overwrite, inputs=inputs)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    except OSError as err:
        raise CannotWrite(path, err) from None
    try:
        with _writing(path, tmp):
            yield tmp
            names = sorted(p.name for p in tmp.iterdir() if p.name != MARKER) if files is None else list(files)
            _write_marker(tmp, kind, names)
            check_output(path, kind=kind, overwrite=overwrite, inputs=inputs)  # it may have changed meanwhile
            _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def claim_dir(path: PathArg, *, kind: str, overwrite: bool = False, inputs: Iterable[PathArg | None] = (),
              files: Sequence[str] | None = None) -> Path:
    """Check ``path`` like :func:`output_dir`, then create it (if needed) and mark it as a cnnlens ``kind``.

    For folders that are filled part by part in place (the demo's), each part through its own
    :func:`output_dir`; nothing already in ``path`` is removed here.
    """
    path = Path(path)
    remove_stale(path)
    check_output(path, kind=kind, overwrite=overwrite, inputs=inputs)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with _writing(path, path):
            _write_marker(path, kind, list(files) if files is not None else list(KINDS[kind].writes))
    except CannotWrite:
        raise
    except OSError as err:
        raise CannotWrite(path, err) from None
    return path


def _write_marker(folder: Path, kind: str, files: list[str]) -> None:
    from cnnlens import __version__

    doc = {"cnnlens": __version__, "kind": kind, "version": MARKER_VERSION, "files": files}
    write_text(folder / MARKER, json.dumps(doc, indent=2) + "\n")


def check_output(path: PathArg, *, kind: str, overwrite: bool = False, inputs: Iterable[PathArg | None] = ()) -> None:
    """Raise :class:`OutputRefused` unless ``path`` may receive a new ``kind`` output folder; change nothing.

    Allowed: a missing folder, an empty one, and with ``overwrite`` an earlier cnnlens output of the same
    kind that holds nothing else. Never: a folder that is or holds one of ``inputs``, a file, a symbolic
    link, a folder cnnlens did not write.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    path = Path(path)
    target = path.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if target == source:
            raise OutputRefused(f"--out {path} is the input {given}: writing the output there would delete it. "
                                "Choose another --out")
        if target in source.parents:
            raise OutputRefused(f"--out {path} holds the input {given}: replacing it would delete that input. "
                                "Choose another --out")
        if (isinstance(given, DataInput) and source in target.parents and source.is_dir()
                and not _written_by_cnnlens(source)):
            # inside a run folder is where outputs belong; inside the user's own data (an image folder, whose
            # new subfolder would become a class) or masks it would change what the next command reads
            raise OutputRefused(f"--out {path} is inside the input folder {given}, which cnnlens did not write (your "
                                "data, say): the output would be added to it. Choose an --out outside it")
    if path.is_symlink():
        raise OutputRefused(f"--out {path} is a symbolic link; give the folder it points to ({target}) or another --out")
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputRefused(f"--out {path} exists and is not a folder; choose another --out")
    try:
        entries = [p for p in path.iterdir() if not _TEMP.match(p.name)]
    except OSError as err:
        raise CannotWrite(path, err) from None
    if not entries:
        return  # an empty folder may be used
    found = output_kind(path)
    if found is None:
        raise OutputRefused(f"--out {path} already exists and was not written by cnnlens (it has no {MARKER}), so it is "
                            "not replaced, not even with --overwrite. Choose another --out, or empty that folder yourself")
    if found != kind:
        raise OutputRefused(f"--out {path} holds {KINDS[found].what}, not {KINDS[kind].what}: --overwrite replaces only an "
                            f"earlier {kind} output. Choose another --out")
    foreign = foreign_entries(path)
    if foreign:
        listed = ", ".join(str(p) for p in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputRefused(f"--out {path} is an earlier cnnlens {kind} output, but it also holds {listed}, which cnnlens "
                            "did not write; replacing it would delete that. Move it out, or choose another --out")
    if not overwrite:
        raise OutputRefused(f"--out {path} already exists; pass --overwrite to replace it (overwrite=True in Python; the old "
                            "folder stays until the new one is complete), or choose another --out")


class DataInput(type(Path())):  # type: ignore[misc]  # the concrete Path class: Python 3.11 cannot subclass Path
    """A command's data (a dataset's file or folder) among its ``inputs``: besides never being replaced, a
    data folder cnnlens did not write never receives an output inside it (a run folder may: RUN/eval)."""


def _written_by_cnnlens(path: Path) -> bool:
    """Whether cnnlens wrote the folder ``path`` (its marker, or a kind's manifest), whatever else it holds now."""
    if _read_marker(path) is not None:
        return True
    for kind in KINDS.values():
        doc = _read_json(path / kind.manifest)
        if isinstance(doc, dict) and all(k in doc for k in kind.keys):
            return True
    return False


def output_kind(path: PathArg) -> str | None:
    """The kind of cnnlens output the folder ``path`` holds (see :data:`KINDS`), or None if cnnlens did not write it.

    A folder with :data:`MARKER` is what the marker says. One written before markers is recognised by its
    kind's manifest, and only if it holds nothing but what that kind writes.
    """
    path = Path(path)
    marker = _read_marker(path)
    if marker is not None:
        return marker["kind"]
    for name, kind in KINDS.items():
        doc = _read_json(path / kind.manifest)
        if isinstance(doc, dict) and all(k in doc for k in kind.keys):
            if name == "synth" and doc.get("generator") != "cnnlens.data.synth":
                continue
            if not _unlisted(path, kind.writes, None):
                return name
    return None


def foreign_entries(path: PathArg) -> list[Path]:
    """Entries of the cnnlens output folder ``path`` (and of cnnlens outputs inside it) that cnnlens did not write."""
    path = Path(path)
    kind = output_kind(path)
    if kind is None:
        return [path]
    marker = _read_marker(path)
    return _unlisted(path, KINDS[kind].writes, marker["files"] if marker is not None else None)


def _unlisted(path: Path, patterns: tuple[str, ...], listed: list[str] | None) -> list[Path]:
    """Entries of ``path`` neither in ``listed`` (a marker's files) nor, without a marker, matching ``patterns``,
    looking inside sub-folders that are cnnlens outputs themselves."""
    out: list[Path] = []
    for entry in sorted(path.iterdir()):
        name = entry.name
        if name == MARKER or _TEMP.match(name):
            continue
        if name in listed if listed is not None else any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if entry.is_dir() and not entry.is_symlink() and output_kind(entry) is not None:
            out += foreign_entries(entry)
            continue
        out.append(entry)
    return out


def _read_marker(path: Path) -> dict | None:
    doc = _read_json(path / MARKER)
    if isinstance(doc, dict) and doc.get("kind") in KINDS and isinstance(doc.get("files"), list):
        return doc
    return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the folder ``tmp`` at ``path`` in one atomic step; the old folder (if any) ends at ``tmp`` and is deleted."""
    if not path.exists():
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # Without an atomic exchange: move the old folder aside, then the new one in. A kill between the two
    # renames leaves no folder at `path`; remove_stale() then moves the old one back.
    old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where that is unavailable."""
    rename = _renameat2()
    if rename is None:
        return False
    if rename(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):  # this file system cannot exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


_RENAMEAT2: list[object] = []


def _renameat2() -> object:
    if not _RENAMEAT2:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (AttributeError, OSError):
            fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


# ------------------------------------------------------------------------------------- stale temps


def remove_stale(path: PathArg) -> list[Path]:
    """Remove the temporary siblings of ``path`` (``.NAME.PID.XXXX.tmp`` / ``.old``) left by killed processes.

    An entry whose process still runs is left alone. When ``path`` itself is missing and a killed swap
    left the old folder aside (``.old``), that folder is moved back first. Returns what was removed.
    """
    path = Path(path)
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    stale = [p for p in siblings if _is_stale(p, path.name)]
    for old in (p for p in stale if p.name.endswith(".old")):
        if not path.exists() and not path.is_symlink():
            with contextlib.suppress(OSError):
                os.rename(old, path)
    removed = []
    for p in stale:
        if p.exists() or p.is_symlink():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def remove_stale_in(folder: PathArg) -> list[Path]:
    """Remove every temporary entry inside ``folder`` left by a killed process (e.g. a run's ``.checkpoint.pt.*.tmp``)."""
    folder = Path(folder)
    try:
        names = {m.group("name") for p in folder.iterdir() if (m := _TEMP.match(p.name))}
    except OSError:
        return []
    return [p for name in sorted(names) for p in remove_stale(folder / name)]


def _is_stale(entry: Path, name: str) -> bool:
    m = re.match(rf"^\.{re.escape(name)}\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.(?:tmp|old)$", entry.name)
    if m is None:
        return False
    pid = m.group("pid")
    return pid is None or not _alive(int(pid))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
