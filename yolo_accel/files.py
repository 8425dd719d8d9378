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


# kernel file systems where a "folder" is an interface (creating one under cgroup makes a control group)
PSEUDO_FILE_SYSTEMS = {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
                       "configfs", "efivarfs", "fusectl", "devpts", "mqueue", "binfmt_misc", "nsfs", "rpc_pipefs"}


def file_system_type(path: Path) -> str:
    """The type of the file system holding the existing `path` ("ext4", "proc", ...), "" where unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:  # not Linux
        return ""
    target, best, kind = os.path.realpath(path), "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040 is a space
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def check_output_folder(path: str | Path, what: str = "the run folder") -> None:
    """Refuse, before any work, a folder that cannot be made or written: under a file, on a pseudo file system such
    as /proc or /sys, on a read-only file system or without permission. Raises ConfigError naming the path."""
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot write {what} {path}: {existing} exists and is not a folder")
    kind = file_system_type(existing)
    if kind in PSEUDO_FILE_SYSTEMS:
        raise ConfigError(f"cannot write {what} {path}: {existing} is on the kernel's {kind} file system, which holds "
                          f"no files of ours; choose a folder on a disk")
    if not os.access(existing, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        why = "a read-only file system" if read_only else "not writable (permission denied)"
        raise ConfigError(f"cannot write {what} {path}: {existing} is {why}")


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... (the first free one), as YOLOv5 names run folders. With
    `mkdir` the folder is claimed by creating it, so runs started at the same moment never get the same one; a
    place where it cannot be made is a ConfigError naming it (check_output_folder)."""
    path = Path(path)
    if mkdir:
        check_output_folder(path)
        try:
            return _claim_folder(path, exist_ok)
        except OSError as err:  # what the checks could not foresee (a full disk, a quota, a race)
            raise ConfigError(f"cannot write the run folder {path}: {err.strerror or err}") from None
    if exist_ok:
        return path
    return _next_free(path) if path.exists() else path


def _next_free(path: Path) -> Path:
    pattern = re.compile(rf"^{re.escape(path.name)}(\d+)$")
    taken = [int(m.group(1)) for p in path.parent.iterdir() if (m := pattern.match(p.name))]
    n = max([1, *taken]) + 1
    while path.with_name(f"{path.name}{n}").exists():
        n += 1
    return path.with_name(f"{path.name}{n}")


def _claim_folder(path: Path, exist_ok: bool) -> Path:
    if exist_ok:
        path.mkdir(parents=True, exist_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # taken, perhaps a moment ago by another run
            candidate = _next_free(path)


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
    text = text.encode(errors="surrogateescape")[:_MAX_NAME_BYTES].decode(errors="ignore").rstrip(" .")
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
