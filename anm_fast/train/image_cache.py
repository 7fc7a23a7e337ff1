"""Decoded image folders, fast: parallel decoding and a cache of the decoded uint8 arrays.

Decoding 60,000 small JPEGs one after the other costs tens of seconds of CPU on every run. Here
the files are decoded by a thread pool (PIL releases the GIL while it decodes and resizes), and
the result, one (n, H, W, 3) uint8 array, is saved as a .npy file named by a fingerprint of what
was read: the image size and every file's relative path, byte size and modification time. A
second run over unchanged files loads that array (seconds); any added, removed, renamed or
rewritten file changes the fingerprint and the folder is decoded again. The cache lives outside
the data folder (which may be read-only): $ANM_FAST_CACHE_DIR, else $XDG_CACHE_HOME/anm_fast,
else ~/.cache/anm_fast; ANM_FAST_CACHE_DIR=off turns it off.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np

CACHE_ENV = "ANM_FAST_CACHE_DIR"


def cache_dir() -> Optional[str]:
    """The folder for decoded arrays, or None when caching is turned off."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "anm_fast")


def fingerprint(root: str, files: Sequence[str], size: int) -> str:
    """Hex digest of (size, then each file's relative path, byte size and mtime in ns)."""
    h = hashlib.sha256(f"anm_fast-images-v1 {int(size)}\n".encode())
    for f in files:
        st = os.stat(os.path.join(root, f))
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def decode_all(root: str, files: Sequence[str], size: int,
               read: Callable[[str, int], np.ndarray], workers: Optional[int] = None) -> np.ndarray:
    """(n, size, size, 3) uint8: `read(path, size)` of every file, by a thread pool, in order."""
    out = np.empty((len(files), size, size, 3), np.uint8)

    def one(i):
        out[i] = read(os.path.join(root, files[i]), size)

    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(files) < 64:
        for i in range(len(files)):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            # list(): re-raises the first failure (a file that is not an image) here
            list(pool.map(one, range(len(files)), chunksize=256))
    return out


def load_images(root: str, files: Sequence[str], size: int,
                read: Callable[[str, int], np.ndarray]) -> np.ndarray:
    """The decoded images of `files` under `root`, from the cache when it holds them."""
    folder = cache_dir()
    if folder is None:
        return decode_all(root, files, size, read)
    path = os.path.join(folder, f"images-{fingerprint(root, files, size)}.npy")
    if os.path.isfile(path):
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(files), size, size, 3) and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):
            pass  # a damaged cache file is decoded again and replaced below
    arr = decode_all(root, files, size, read)
    try:
        os.makedirs(folder, exist_ok=True)
        # via a temporary file in the same folder: a concurrent or killed writer never leaves
        # a half-written array under the final name
        fd, tmp = tempfile.mkstemp(prefix=".images-", suffix=".npy", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, path)
        except OSError:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # an unwritable cache folder only costs the next run its decode time
    return arr
