"""One process owns a run folder at a time.

A fresh run claims a folder that no other run uses: `<out>`, else `<out>-2`, `<out>-3`, ...
Every owner holds an exclusive flock on the folder's lock file for as long as it runs. A fresh
run takes a folder only if it gets that lock and the folder then holds nothing but the lock file
(a new folder, an empty one, or one whose run died before writing anything), so two runs started
at the same instant with the same --out always get two folders. A second `--resume` of a folder
finds it locked and stops with a one-line message instead of logging the same epochs twice.
The kernel releases the lock when its holder exits in any way (SIGKILL included), so a lock file
left behind never blocks a resume.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Iterator

LOCK = ".anm-train.lock"


class RunFolderBusy(ValueError):
    """The run folder is owned by another running process."""


def _open_lock(folder: str) -> int:
    return os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return True


def _claim(folder: str) -> int:
    """The locked lock file's descriptor if `folder` is free for a fresh run, else -1."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = _open_lock(folder)
    except (FileExistsError, NotADirectoryError):  # a file of that name
        return -1
    if _try_lock(fd) and os.listdir(folder) == [LOCK]:
        return fd
    os.close(fd)  # in use, or a run's folder (possibly one written before lock files existed)
    return -1


@contextlib.contextmanager
def claim_new(out: str) -> Iterator[str]:
    """Claim `out` or the first free `out-2`, `out-3`, ... for a fresh run and hold it locked;
    yields the folder's path."""
    folder, k = out, 1
    while True:
        fd = _claim(folder)
        if fd >= 0:
            break
        k += 1
        folder = f"{out}-{k}"
    with _held(fd):
        yield folder


@contextlib.contextmanager
def own(folder: str) -> Iterator[str]:
    """Hold an existing run folder (for --resume); RunFolderBusy if another process holds it."""
    fd = _open_lock(folder)
    if not _try_lock(fd):
        owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunFolderBusy(f"{folder} is in use by another anm-train process (pid {owner}); "
                            f"wait for it to end or stop it first")
    with _held(fd):
        yield folder


@contextlib.contextmanager
def _held(fd: int) -> Iterator[None]:
    try:
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays, marking the folder as a run's
