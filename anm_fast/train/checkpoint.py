"""Atomic checkpoints: a crash at any moment leaves either the old file or the new one, whole.

The new state goes to a temporary file in the same folder, is flushed and fsync'ed, and only then
renamed over the old checkpoint (rename is atomic within a file system); the folder is fsync'ed
so the rename itself survives a power cut. The state holds everything an exact resume needs:
networks, optimisers, schedulers, the method's generators, torch's global RNG states, the GMM loss
history and the epoch; it loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional

import torch

CHECKPOINT = "checkpoint.pt"


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(state: Dict[str, Any], path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # KeyboardInterrupt included: never leave a half-written temp file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems (and Windows) cannot fsync a folder
        pass


def load(path: str, map_location="cpu") -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location=map_location, weights_only=True)
