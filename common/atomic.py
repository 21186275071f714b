"""Files a reader may trust: write to a temporary name, fsync, rename; and locks on folders.

with atomic_path(out / "index.faiss") as tmp:   # write tmp; on success it replaces the target
    faiss.write_index(index, str(tmp))
with output_lock(run_dir, "training"):          # a second writer gets a one-line error
    ...
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from common.errors import UserError

OUTPUT_LOCK = ".output.lock"


class OutputBusyError(UserError):
    """Another process is writing the same output folder."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """Block until an exclusive lock on `path` is held (across threads and processes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# File descriptors of the output locks this process holds. A forked child (DataLoader workers,
# img2dataset's pools) would otherwise share the lock and keep it after its parent was killed.
_HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    if not _HELD_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _HELD_LOCKS:
            with contextlib.suppress(OSError):
                os.dup2(
                    null, fd
                )  # the fd number stays valid (its owner closes it later), the lock is not ours
    finally:
        os.close(null)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def output_lock(out: Path | str, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on an output folder while writing it; refuse at once if it is held.

    Two runs writing one folder would race on the same files; the second one fails at once with a
    message naming the holder. The lock dies with its process, so a killed run leaves no stale lock.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / OUTPUT_LOCK
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise OutputBusyError(
                f"{out} is being written by another run ({holder}); wait for it to finish or choose another output"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps({"pid": os.getpid(), "what": what, "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        )
        handle.flush()
        _HELD_LOCKS.add(handle.fileno())
        yield path
    finally:
        _HELD_LOCKS.discard(handle.fileno())
        handle.close()


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def replace_directory(staging: Path | str, target: Path | str) -> None:
    """Put the finished folder `staging` in place of `target`: a reader sees the old folder or the new one.

    With renameat2 the two are exchanged in one step; elsewhere target is renamed aside first (a
    process killed in between leaves `target` missing and its old contents at `.NAME.old`).
    The old contents are removed afterwards.
    """
    staging, target = Path(staging), Path(target)
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging)  # now holds the old contents
        _fsync_dir(target.parent)
        return
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
