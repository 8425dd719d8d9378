"""Filesystem helpers shared by checkpoints, caches and run folders: atomic writes, exp{N} naming, the cache."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .config import ConfigError


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = False) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file. `write` creates the
    file, so it gets the umask's permissions. `durable`: the file and its folder are on the disk before this
    returns (a power cut keeps either the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        write(tmp)
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... (the first free one), as YOLOv5 names run folders. With
    `mkdir` the folder is claimed by creating it, so runs started at the same moment never get the same one."""
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    pattern = re.compile(rf"^{re.escape(path.name)}(\d+)$")

    def next_free() -> Path:
        taken = [int(m.group(1)) for p in path.parent.iterdir() if (m := pattern.match(p.name))]
        n = max([1, *taken]) + 1
        while path.with_name(f"{path.name}{n}").exists():
            n += 1
        return path.with_name(f"{path.name}{n}")

    if not mkdir:
        return next_free() if path.exists() else path
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # taken, perhaps a moment ago by another run
            candidate = next_free()


@contextlib.contextmanager
def exclusive_use(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder`/.lock while the block runs; another process asking for it meanwhile gets FolderInUse."""
    lock = FileLock(folder / ".lock", timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise FolderInUse(f"{folder} is in use by another {what} (it holds {folder / '.lock'}); choose another "
                          f"--name, or wait for that one to end") from None
    try:
        yield
    finally:
        lock.release()


class FolderInUse(ConfigError):
    """A run folder another process is using."""


# path separators, NUL and other control characters, and what Windows refuses in a file name
_UNSAFE_IN_NAME = re.compile(r'[\x00-\x1f\x7f/\\<>:"|?*]')
_MAX_NAME_BYTES = 120


def safe_filename(name: object, fallback: str) -> str:
    """`name` as one path component that stays where it is put: separators and control characters become `_`,
    it is cut to 120 bytes, and "", "." or ".." (and names of dots alone) become `fallback`. For text that comes from
    files (class names in weights or data yamls), never trusted to name a folder as it is."""
    text = _UNSAFE_IN_NAME.sub("_", str(name)).strip()
    text = text.encode()[:_MAX_NAME_BYTES].decode(errors="ignore").rstrip(" .")
    return text if text.strip(".") else fallback


def child_path(parent: Path, name: object, fallback: str) -> Path:
    """parent / safe_filename(name), checked to resolve inside `parent` (symlinks included)."""
    path = parent / safe_filename(name, fallback)
    if not path.resolve().is_relative_to(parent.resolve()):
        raise ValueError(f"{path}: resolves outside {parent}")
    return path


CACHE_ENV = "YOLO_ACCEL_CACHE"


def cache_dir() -> Path:
    """Where generated files go (demo data, --cache disk): $YOLO_ACCEL_CACHE, $XDG_CACHE_HOME/yolo-accel or
    ~/.cache/yolo-accel."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "yolo-accel"
    return Path.home() / ".cache" / "yolo-accel"
