"""Fault-safe checkpoints: a crash or SIGKILL at any moment leaves at least one whole, verified
checkpoint in the run folder (once the first one has been written).

Each save serialises the state in memory, writes it to a temporary file in the same folder,
flushes and fsyncs it, and renames it over `checkpoint.pt` (rename is atomic within a file
system); the folder is fsynced so the rename itself survives a power cut. The previous checkpoint
is kept as `checkpoint.prev.pt`. A rename is atomic, but a disk, a copy tool or a full file system
can still leave a file truncated or corrupt, and torch.load does not always notice (zip entries
are not CRC-checked on load), so each checkpoint proves its own integrity: it holds the sha256 of
its content (every tensor's bytes, every key and value; `content_digest`), checked after loading.
A sidecar `<file>.sha256` of the file's bytes is also written and checked where present.
`load_latest` uses the newest file that passes and falls back to the previous one otherwise.

A checkpoint also carries the identity of its run (data set, noise, method, seed, model; see
`run_identity`): one copied into another run's folder is refused, never resumed silently.

Save order (each step atomic) and what a kill between two steps leaves:
  1. tmp file written + fsynced         -> current pair intact
  2. current pair hard-linked to prev    -> current intact (prev may be mid-update: ignored)
  3. new sidecar renamed into place      -> current mismatches, prev pair intact
  4. tmp renamed over checkpoint.pt      -> current pair intact (new)
The state holds everything an exact resume needs: networks, optimisers, schedulers, the method's
generators, torch's global RNG states, the GMM loss history and the epoch; it loads with
torch.load(weights_only=True).
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import time
from typing import Any, Dict, Optional

import torch

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
SUFFIX = ".sha256"
INTEGRITY = "integrity"  # the state key holding the content's sha256
# Test-only: seconds to sleep in the middle of each save, so a test's SIGKILL can land inside a
# checkpoint write (tests/test_train_faults.py). Never set it in real runs.
_SLOW_ENV = "ANM_FAST_TEST_SLOW_CHECKPOINT"


class CheckpointError(ValueError):
    """A run folder's checkpoint files exist but none of them is whole (or usable by this run)."""


def _feed(h, obj) -> None:
    """Hash `obj` (the nested state) canonically: structure, types and every value."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}|".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}|".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.dtype,
                                         torch.device)):
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())
    else:
        raise TypeError(f"checkpoint state holds a {type(obj).__name__}, which it cannot checksum")


def content_digest(state: Dict[str, Any]) -> str:
    """sha256 of a checkpoint state's content (without its own INTEGRITY entry)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != INTEGRITY})
    return h.hexdigest()


# What makes two runs the same run: a checkpoint of one must never continue another.
_IDENTITY_HP = ("model", "width", "image_size", "train_subset", "pretrained")


def run_identity(settings, method_name: str, seed: int, hp: Dict[str, Any], data) -> Dict[str, Any]:
    """The identity of one (method, seed) run, stored in its checkpoints and compared on resume."""
    identity = {"dataset": settings.dataset, "noise": settings.noise,
                "noise_rate": float(settings.noise_rate), "method": method_name,
                "seed": int(seed), "train_samples": int(len(data.y_train)),
                "num_classes": int(data.num_classes)}
    identity.update({k: hp.get(k) for k in _IDENTITY_HP})
    return identity


def _check_identity(state: Dict[str, Any], identity: Dict[str, Any], path: str) -> None:
    # checkpoints written before identities were stored carry the method and the seed
    theirs = state.get("identity") or {"method": state.get("method_name"), "seed": state.get("seed")}
    diffs = [f"{k} {theirs[k]!r}, not {identity[k]!r}" for k in identity
             if k in theirs and theirs[k] != identity[k]]
    if diffs:
        raise CheckpointError(f"{path} belongs to another run ({'; '.join(diffs)}); a run folder "
                              f"only resumes its own checkpoints: move it away or use the run "
                              f"folder it came from")


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _slow_pause():
    delay = os.environ.get(_SLOW_ENV)
    if delay:
        time.sleep(float(delay))


def _fsync_dir(folder: str) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some file systems (and Windows) cannot fsync a folder
        pass


def _write_file(path_tmp_dir: str, prefix: str, data: bytes, *, slow: bool = False) -> str:
    """`data` in a new fsynced temp file in the folder; returns its path (removed on failure)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path_tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            if slow:  # half a file on disk while the test's kill may land
                f.write(data[: len(data) // 2])
                f.flush()
                _slow_pause()
                f.write(data[len(data) // 2:])
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        # KeyboardInterrupt included: never leave a half-written temp file behind
        _unlink(tmp)
        raise
    return tmp


def _remove_stale_temps(folder: str) -> None:
    """Temp files of a writer killed mid-save (SIGKILL runs no cleanup). One writer per run
    folder (rank 0 of one run), so any temp file found before a save is stale."""
    for name in os.listdir(folder):
        if name.startswith((".tmp-", ".tmp-sum-", ".tmp-link-")):
            _unlink(os.path.join(folder, name))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _keep_previous(path: str, prev: str) -> None:
    """Make `prev` (and its sidecar) the current pair's content without ever removing the
    current pair: hard links where the file system has them, copies otherwise."""
    folder = os.path.dirname(prev)
    for src, dst in ((path, prev), (path + SUFFIX, prev + SUFFIX)):
        if not os.path.exists(src):
            _unlink(dst)
            continue
        tmp = os.path.join(folder, f".tmp-link-{os.getpid()}-{os.path.basename(dst)}")
        _unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def save_atomic(state: Dict[str, Any], path: str) -> None:
    """Write `state` to `path` as described in the module docstring, keeping the previous one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(path))
    _remove_stale_temps(folder)
    state = dict(state)
    state[INTEGRITY] = {"sha256": content_digest(state)}
    buf = io.BytesIO()
    torch.save(state, buf)  # in memory first: the checksum is of exactly the bytes written
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    tmp = _write_file(folder, ".tmp-", data, slow=bool(os.environ.get(_SLOW_ENV)))
    try:
        tmp_sum = _write_file(folder, ".tmp-sum-", f"{digest}  {os.path.basename(path)}\n".encode())
    except BaseException:
        _unlink(tmp)
        raise
    try:
        if os.path.exists(path):
            _keep_previous(path, os.path.join(folder, PREVIOUS))
            _slow_pause()
        os.replace(tmp_sum, path + SUFFIX)
        _slow_pause()
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        _unlink(tmp_sum)
        raise
    _fsync_dir(folder)


def load_file(path: str, map_location="cpu") -> Optional[Dict[str, Any]]:
    """One checkpoint file, verified; None when missing, corrupt or truncated."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: move it away")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    sidecar = path + SUFFIX
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            want = f.read().split()
        if not want or hashlib.sha256(data).hexdigest() != want[0]:
            return None
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a usable checkpoint
        return None
    if not isinstance(state, dict) or "epoch" not in state:
        return None
    integrity = state.pop(INTEGRITY, None)
    if integrity is None:
        # written before checkpoints held their checksum: only its sidecar can vouch for it
        return state if os.path.isfile(sidecar) else None
    try:
        whole = isinstance(integrity, dict) and integrity.get("sha256") == content_digest(state)
    except TypeError:  # a value no checkpoint holds: damage in the file
        whole = False
    return state if whole else None


def load_latest(run_dir: str, map_location="cpu", *, quiet: bool = False,
                identity: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The newest whole checkpoint in `run_dir`: checkpoint.pt, else checkpoint.prev.pt.
    None when the folder holds no checkpoint at all; CheckpointError when it holds only
    damaged ones (starting over silently would throw the user's run away), or, given the
    `identity` of the run resuming (`run_identity`), a checkpoint of another run."""
    cur, prev = os.path.join(run_dir, CHECKPOINT), os.path.join(run_dir, PREVIOUS)
    state, used = load_file(cur, map_location), cur
    if state is None:
        state, used = load_file(prev, map_location), prev
        if state is not None and os.path.exists(cur) and not quiet:
            print(f"warning: {cur} is damaged or incomplete; resuming from {prev} "
                  f"(epoch {state['epoch']})", file=sys.stderr)
    if state is None:
        if os.path.exists(cur) or os.path.exists(prev):
            raise CheckpointError(f"{run_dir}: {CHECKPOINT} and {PREVIOUS} are both damaged or "
                                  f"incomplete; move them away to restart this run from scratch")
        return None
    if identity is not None:
        _check_identity(state, identity, used)
    return state


def load(path: str, map_location="cpu") -> Optional[Dict[str, Any]]:
    """The newest whole checkpoint of the run folder holding `path` (kept for callers that
    name the file)."""
    return load_latest(os.path.dirname(os.path.abspath(path)), map_location)
