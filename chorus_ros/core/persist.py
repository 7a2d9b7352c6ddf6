"""Crash-safe, confined saves: a folder of files written as one set, checked before it is used.

A *save* is a folder holding data files plus ``manifest.json`` (written last) that lists every
file with its size and SHA-256, the save format version, the kind of state it holds
(``"chorus_ros.PerceptionPipeline"``) and free-form metadata (the node stores the map id and
sequence there). Nothing here knows what the data files mean; :mod:`chorus_ros.core.pipeline`
writes and parses them.

Writing (:func:`write_save`): the files go into a temporary sibling folder
``.<name>.chorus-tmp-<hex>``, are fsync'ed, the manifest is written last, and the folder is
renamed into place. An existing save of ours at the target is swapped with it in one atomic
step where the system can (Linux ``renameat2(RENAME_EXCHANGE)``), else first renamed aside to
``.<name>.chorus-old-<hex>``, the new one renamed in, the old one removed: a reader sees the old
set or the new set, never a mix. Anything else at the target (a file, a foreign folder) is never
replaced. A crash leaves at worst a temporary or an aside folder, which :func:`clean_orphans`
removes (or, for an aside folder whose target vanished, puts back) at start-up.

Reading (:func:`verify_save`): the manifest must parse, name this format and kind, and list
exactly the files on disk with matching sizes and hashes; a missing manifest (a save cut short,
or written before manifests existed), a missing, extra, truncated or altered file is refused
with a :class:`~chorus_ros.core.errors.CheckpointError` naming it.

Confinement (:func:`resolve_in_root`): a request path is a relative name inside a save root (or
an absolute path inside it): no ``..``, no hidden components, bounded depth, no symbolic link
on the way. :func:`check_free_space` refuses a save that would leave too little disk.

Example::

    target = resolve_in_root(root, "lab/run1", max_depth=4)
    check_free_space(target, need_bytes=2 ** 20, reserve_bytes=256 * 2 ** 20)
    write_save(target, lambda tmp: (tmp / "a.bin").write_bytes(b"..."), kind="demo")
    manifest = verify_save(target, kind="demo", required=["a.bin"])
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from chorus_ros.core.errors import CheckpointError, InvalidInputError

__all__ = ["SAVE_FORMAT", "SAVE_FORMAT_VERSION", "MANIFEST", "FileEntry", "Manifest", "SaveRefusedError",
           "sha256_file", "write_manifest", "read_manifest", "verify_save", "is_save", "write_save",
           "clean_orphans", "resolve_in_root", "check_free_space", "default_save_root"]

SAVE_FORMAT = "chorus_ros.save"
SAVE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 1 << 20
_ORPHAN = re.compile(r"^\.(?P<name>.+)\.chorus-(?P<kind>tmp|old)-[0-9a-f]{32}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class SaveRefusedError(CheckpointError, InvalidInputError):
    """A save or load request was refused before anything was written or replaced (path outside
    the save root, foreign folder at the target, not enough free space...)."""


@dataclass
class FileEntry:
    """One file of a save."""

    size: int
    """Bytes."""
    sha256: str
    """Lower-case hex SHA-256 of the content."""


@dataclass
class Manifest:
    """``manifest.json`` of a save."""

    kind: str
    """What the save holds (e.g. ``"chorus_ros.PerceptionPipeline"``)."""
    files: dict[str, FileEntry]
    """File name (no folders) -> size and hash."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON metadata of the writer (the node: ``map_id``, ``map_sequence``)."""

    def to_json(self) -> str:
        return json.dumps({"format": SAVE_FORMAT, "format_version": SAVE_FORMAT_VERSION, "kind": self.kind,
                           "files": {k: {"size": v.size, "sha256": v.sha256} for k, v in sorted(self.files.items())},
                           "meta": self.meta}, indent=1, sort_keys=True)


# ------------------------------------------------------------------------------ helpers
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _simple_name(name: Any) -> bool:
    return (isinstance(name, str) and bool(name) and name not in (".", "..", MANIFEST)
            and "/" not in name and "\\" not in name and "\0" not in name)


# ----------------------------------------------------------------------------- manifest
def write_manifest(folder: str | os.PathLike, kind: str, meta: dict | None = None) -> Manifest:
    """Hash every regular file of ``folder`` (no sub-folders allowed) and write
    ``manifest.json`` last, through a temporary file, fsync'ed. Returns the manifest."""
    folder = Path(folder)
    files: dict[str, FileEntry] = {}
    for p in sorted(folder.iterdir()):
        if p.name in (MANIFEST, MANIFEST + ".part"):
            continue
        if p.is_symlink() or not p.is_file():
            raise CheckpointError(f"{p}: a save holds regular files only")
        _fsync_file(p)
        files[p.name] = FileEntry(p.stat().st_size, sha256_file(p))
    m = Manifest(kind, files, dict(meta or {}))
    part = folder / (MANIFEST + ".part")
    with open(part, "w", encoding="utf-8") as f:
        f.write(m.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, folder / MANIFEST)
    _fsync_dir(folder)
    return m


def read_manifest(folder: str | os.PathLike) -> Manifest:
    """Parse and check ``<folder>/manifest.json`` (format, version, file list); does not look
    at the files (see :func:`verify_save`). Raises CheckpointError naming the problem."""
    folder = Path(folder)
    p = folder / MANIFEST
    if not p.is_file():
        raise CheckpointError(f"{folder} has no {MANIFEST}: not a complete chorus_ros save (cut short by a "
                              f"crash, or written before saves had manifests); refusing to load it. A complete "
                              f"older save can be adopted with chorus_ros.core.persist.write_manifest(folder, "
                              f"'chorus_ros.PerceptionPipeline') after checking it by hand")
    if p.stat().st_size > _MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{p}: {p.stat().st_size} bytes, larger than any manifest we write")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p} is not valid JSON: {e}") from e
    if not isinstance(d, dict) or d.get("format") != SAVE_FORMAT:
        raise CheckpointError(f"{p}: not a chorus_ros save manifest (format "
                              f"{d.get('format') if isinstance(d, dict) else type(d).__name__!r})")
    if d.get("format_version") != SAVE_FORMAT_VERSION:
        raise CheckpointError(f"{p}: unsupported save format version {d.get('format_version')!r} "
                              f"(this version reads {SAVE_FORMAT_VERSION})")
    kind, files, meta = d.get("kind"), d.get("files"), d.get("meta", {})
    if not isinstance(kind, str) or not isinstance(files, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{p}: 'kind' must be a string, 'files' and 'meta' mappings")
    entries: dict[str, FileEntry] = {}
    for name, e in files.items():
        if not _simple_name(name):
            raise CheckpointError(f"{p}: bad file name {name!r} in the manifest")
        size, sha = (e.get("size"), e.get("sha256")) if isinstance(e, dict) else (None, None)
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0
                and isinstance(sha, str) and _SHA.match(sha)):
            raise CheckpointError(f"{p}: entry {name!r} needs an int 'size' >= 0 and a hex 'sha256', got {e!r}")
        entries[name] = FileEntry(size, sha)
    return Manifest(kind, entries, meta)


def verify_save(folder: str | os.PathLike, *, kind: str, required: Iterable[str] = ()) -> Manifest:
    """Check a whole save before anything of it is used: the manifest (:func:`read_manifest`)
    names ``kind`` and lists every ``required`` file; the folder holds exactly the listed files
    (plus the manifest), each with the listed size and SHA-256.

    Raises:
        CheckpointError: not a folder, no/invalid manifest, missing, unlisted, truncated or
            altered files (all named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"saved state {folder} does not exist or is not a folder")
    m = read_manifest(folder)
    if m.kind != kind:
        raise CheckpointError(f"{folder}: holds a {m.kind!r} save, expected {kind!r}")
    missing_req = sorted(set(required) - set(m.files))
    if missing_req:
        raise CheckpointError(f"{folder}: the manifest does not list {missing_req}")
    on_disk = {p.name for p in folder.iterdir()} - {MANIFEST}
    absent, extra = sorted(set(m.files) - on_disk), sorted(on_disk - set(m.files))
    if absent or extra:
        raise CheckpointError(f"{folder}: mixed or partial save: missing files {absent}, files not in "
                              f"the manifest {extra}; refusing to load it")
    for name, e in sorted(m.files.items()):
        p = folder / name
        if p.is_symlink() or not p.is_file():
            raise CheckpointError(f"{p}: not a regular file")
        size = p.stat().st_size
        if size != e.size:
            raise CheckpointError(f"{p}: {size} bytes, the manifest says {e.size} (truncated or replaced); "
                                  f"refusing to load this save")
        if sha256_file(p) != e.sha256:
            raise CheckpointError(f"{p}: content differs from the manifest's SHA-256 (altered, or from "
                                  f"another save); refusing to load this save")
    return m


def is_save(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a real folder carrying a manifest of ours (a save we may replace)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        read_manifest(folder)
    except CheckpointError:
        return False
    return True


# ------------------------------------------------------------------------------ writing
def _replaceable(target: Path) -> None:
    if not os.path.lexists(target):
        return
    if target.is_symlink():
        raise SaveRefusedError(f"{target} is a symbolic link; refusing to replace it")
    if target.is_dir() and (is_save(target) or not any(target.iterdir())):
        return
    what = "folder that is not a chorus_ros save" if target.is_dir() else "file"
    raise SaveRefusedError(f"{target} exists and is a {what}; refusing to overwrite it (only folders "
                           f"carrying a chorus_ros {MANIFEST} are replaced)")


def write_save(target: str | os.PathLike, write_files: Callable[[Path], None], *, kind: str,
               meta: dict | None = None) -> Manifest:
    """Write a save to ``target`` as one set (see the module docstring).

    Args:
        target: the save folder; its parent folders are created. If it exists it must be an
            empty folder or a save of ours (anything else: SaveRefusedError, nothing written).
        write_files: ``write_files(folder)`` writes the data files (regular files, no
            sub-folders) into the temporary folder it is given.
        kind: what the save holds (checked by :func:`verify_save`).
        meta: JSON-able metadata stored in the manifest.

    Returns:
        The manifest written. On any error the temporary folder is removed and an existing
        save at ``target`` is left as it was.
    """
    target = Path(target)
    _replaceable(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name}.chorus-tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        write_files(tmp)
        m = write_manifest(tmp, kind, meta)
        _replaceable(target)      # again: something may have appeared while we were writing
        if os.path.lexists(target) and _exchange(tmp, target):
            _fsync_dir(parent)            # one step: the name always holds a whole save
            shutil.rmtree(tmp, ignore_errors=True)   # tmp now holds the old save
        elif os.path.lexists(target):
            old = parent / f".{target.name}.chorus-old-{uuid.uuid4().hex}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            _fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
            _fsync_dir(parent)
        return m
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False when the
    platform or file system cannot (the caller then renames the old save aside first)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - old C library
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def clean_orphans(root: str | os.PathLike, max_depth: int = 8) -> list[str]:
    """Remove what interrupted saves left under ``root`` (down to ``max_depth`` levels):
    temporary folders are deleted; an aside folder is put back when its save is missing (a crash
    between the two renames), else deleted. Symbolic links are never followed. Returns one line
    per action."""
    root = Path(root)
    done: list[str] = []
    if root.is_symlink() or not root.is_dir():
        return done

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        for p in entries:
            if p.is_symlink() or not p.is_dir():
                continue
            m = _ORPHAN.match(p.name)
            if m is None:
                if depth < max_depth and not (p / MANIFEST).is_file():
                    walk(p, depth + 1)
                continue
            target = folder / m.group("name")
            if m.group("kind") == "old" and not os.path.lexists(target) and is_save(p):
                os.rename(p, target)
                done.append(f"restored {target} from the interrupted save's aside copy {p.name}")
            else:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p} left by an interrupted save")
    walk(root, 1)
    return done


# ------------------------------------------------------------------------- confinement
def default_save_root() -> Path:
    """``$ROS_HOME/chorus_ros/maps`` (``~/.ros/chorus_ros/maps`` when ROS_HOME is unset)."""
    home = os.environ.get("ROS_HOME") or os.path.join(os.path.expanduser("~"), ".ros")
    return Path(home) / "chorus_ros" / "maps"


def resolve_in_root(root: str | os.PathLike, path: str, *, max_depth: int = 4) -> Path:
    """The folder a request ``path`` names inside the save ``root``.

    ``path`` is a relative name (``"lab/run1"``) or an absolute path inside ``root``. Refused
    (SaveRefusedError naming the rule): empty, NUL bytes, ``..`` or ``.`` components, hidden
    components (``.name``: reserved for temporary folders), more than ``max_depth`` components,
    an absolute path outside ``root``, or a symbolic link anywhere below ``root``. The root
    itself need not exist yet (its own symbolic links are resolved: it is configuration)."""
    if not isinstance(path, str) or not path.strip():
        raise SaveRefusedError("empty save path: give a name inside the save root (parameter save_root)")
    if "\0" in path:
        raise SaveRefusedError("save path contains a NUL byte")
    root = Path(os.path.expanduser(str(root)))
    if not root.is_absolute():
        raise SaveRefusedError(f"save root {str(root)!r} must be an absolute path")
    real_root = root.resolve()
    p = Path(path)
    raw_parts = path.replace("\\", "/").split("/")
    if p.is_absolute():
        for base in (root, real_root):
            try:
                rel = p.relative_to(base)
                break
            except ValueError:
                continue
        else:
            raise SaveRefusedError(f"{path!r} is outside the save root {str(real_root)!r} (parameter "
                                   f"save_root); give a name inside it")
        raw_parts = list(rel.parts)
    bad = [c for c in raw_parts if c in ("..", ".")]
    if bad:
        raise SaveRefusedError(f"{path!r}: '..' and '.' are not allowed in save paths")
    parts = [c for c in raw_parts if c]
    if not parts:
        raise SaveRefusedError(f"{path!r} names the save root itself; give a name inside it")
    hidden = [c for c in parts if c.startswith(".")]
    if hidden:
        raise SaveRefusedError(f"{path!r}: hidden names {hidden} are reserved (temporary save folders)")
    if len(parts) > max_depth:
        raise SaveRefusedError(f"{path!r} is {len(parts)} levels deep; at most {max_depth} are allowed "
                               f"(parameter save_max_depth)")
    long = [c[:20] for c in parts if len(c.encode()) > 255]
    if long:
        raise SaveRefusedError(f"{path!r}: path components longer than 255 bytes: {long}")
    target = real_root.joinpath(*parts)
    cur = real_root
    for c in parts:
        cur = cur / c
        if cur.is_symlink():
            raise SaveRefusedError(f"{path!r}: {cur} is a symbolic link; save paths may not go through links")
        if not os.path.lexists(cur):
            break
    if target.resolve() != target:   # belt and braces: nothing may resolve elsewhere
        raise SaveRefusedError(f"{path!r} resolves outside {str(target)!r}")
    return target


def check_free_space(target: str | os.PathLike, need_bytes: int, reserve_bytes: int) -> int:
    """Refuse (SaveRefusedError) when writing ``need_bytes`` next to ``target`` would leave less
    than ``reserve_bytes`` free on its volume. Returns the free bytes measured."""
    p = Path(target)
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if free - int(need_bytes) < int(reserve_bytes):
        raise SaveRefusedError(f"not enough disk space for a save at {target}: about {need_bytes / 2**20:.1f} MiB "
                               f"needed, {free / 2**20:.1f} MiB free, {reserve_bytes / 2**20:.1f} MiB must stay "
                               f"free (parameter save_min_free_mb); nothing was written")
    return free
