"""Fault safety of anm-train: SIGKILL at random moments (some inside a checkpoint write), a
damaged latest checkpoint (also without its sidecar), and SIGTERM; every resumed run must end
bit-identical (CPU, one thread, fixed seed) to an uninterrupted one. Checkpoints of another run,
a torn metrics row, a damaged noise cache, a folder in place of the checkpoint, a full disk and a
read-only file system: one-line errors or an exact rebuild, nothing lost."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from anm_fast.testing import assert_same_state
from anm_fast.train import checkpoint as ckpt
from anm_fast.train.cli import _save_settings, build_parser, main, settings_from
from anm_fast.train.loop import run as run_loop

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

EPOCHS = 6
ARGS = ["--dataset", "digits", "--method", "anm", "--epochs", str(EPOCHS), "--noise-rate", "0.5",
        "--set", "train_subset=200", "--width", "8", "--warmup", "1", "--batch-size", "32",
        "--threads", "1", "--device", "cpu", "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in-process: same code path as the CLI, no interpreter start-up)."""
    out = str(tmp_path_factory.mktemp("ref") / "run")
    assert main(ARGS + ["--out", out]) == 0
    return ckpt.load_latest(os.path.join(out, "anm", "seed0"))


def _start(run, resume, slow=None):
    env = dict(os.environ)
    env.pop("ANM_FAST_TEST_SLOW_CHECKPOINT", None)
    if slow:
        env["ANM_FAST_TEST_SLOW_CHECKPOINT"] = str(slow)
    cmd = [sys.executable, "-m", "anm_fast.train"] + (
        ["--resume", run, "--no-progress", "--no-plots"] if resume else ARGS + ["--out", run])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _check_folder(run_dir):
    """At every kill point: a verified checkpoint, or none at all before the first epoch ends."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    state = ckpt.load_latest(run_dir, quiet=True)  # raises CheckpointError if all are damaged
    if state is None:
        assert not any(n.startswith("checkpoint") and n.endswith(".pt") for n in names), names
        return 0
    return int(state["epoch"])


def _epoch_while_writing(run_dir):
    """The checkpoint epoch seen while the trainer may be writing: a read between its renames
    of checkpoint.pt and its checksum (or of the previous one) sees neither whole, which counts
    as no progress yet. After a kill, _check_folder must find a whole one."""
    try:
        return _check_folder(run_dir)
    except ckpt.CheckpointError:
        return -1


def _inode(path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _wait_for(proc, cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            return time.time()
        time.sleep(0.005)
    return None


def _in_checkpoint_write(run_dir):
    return os.path.isdir(run_dir) and any(n.startswith(".tmp-") for n in os.listdir(run_dir))


def test_sigkill_at_random_points_then_resume_is_identical(tmp_path, reference):
    rng = random.Random(7)
    run = str(tmp_path / "run")
    run_dir = os.path.join(run, "anm", "seed0")
    kills = []
    # alternate: a kill at a random moment, and a kill as soon as a checkpoint write is under way
    # (the write is slowed by the test hook so the kill lands inside it)
    for attempt in range(4):
        resume = os.path.exists(os.path.join(run, "run_config.json"))
        before = _check_folder(run_dir)
        inode = _inode(os.path.join(run_dir, "metrics.jsonl"))
        proc = _start(run, resume, slow=0.15)
        if attempt % 2 == 0:
            # a random moment of the training itself (interpreter start-up varies by machine):
            # counted from when the process creates the run's folder
            # (fresh) or rewrites metrics.jsonl through a temp file, a new inode (resumed)
            metrics = os.path.join(run_dir, "metrics.jsonl")
            t0 = _wait_for(proc, lambda: os.path.isdir(run_dir) and (
                not resume or _inode(metrics) != inode))
            deadline = (t0 or time.time()) + rng.uniform(0.0, 3.0)
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
            where = "random"
        else:
            # let this process finish one checkpoint first (so the run makes progress and a
            # previous checkpoint exists), then kill it inside its next write
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None and not (
                    _epoch_while_writing(run_dir) > before and _in_checkpoint_write(run_dir)):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the (slowed) write
            where = "in checkpoint write"
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        epoch = _check_folder(run_dir)
        kills.append((where, epoch))
        if epoch >= EPOCHS:
            break
    print("kills (where, checkpoint epoch):", kills)
    assert any(w == "in checkpoint write" and e >= 1 for w, e in kills)
    proc = _start(run, resume=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    state = ckpt.load_latest(run_dir)
    assert state["epoch"] == EPOCHS, kills
    assert_same_state(reference["method"], state["method"])
    assert_same_state(reference["rng"], state["rng"])
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp-")]


def _run_partly(run, epochs_done):
    """The reference settings, stopped after `epochs_done` epochs (same schedule as the full run)."""
    s, _, _ = settings_from(build_parser().parse_args(ARGS))
    os.makedirs(run)
    _save_settings(s, run)
    run_loop(s, run, stop_after=epochs_done)


def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, reference):
    run = str(tmp_path / "run")
    _run_partly(run, 3)
    run_dir = os.path.join(run, "anm", "seed0")
    cur = os.path.join(run_dir, ckpt.CHECKPOINT)
    size = os.path.getsize(cur)
    with open(cur, "r+b") as f:  # a flipped byte in the middle: torch.load alone may not notice
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert ckpt.load_file(cur) is None
    assert ckpt.load_latest(run_dir, quiet=True)["epoch"] == 2
    with open(cur, "r+b") as f:  # and a truncated one
        f.truncate(size // 3)
    assert ckpt.load_latest(run_dir, quiet=True)["epoch"] == 2
    assert main(["--resume", run, "--no-progress", "--no-plots"]) == 0
    state = ckpt.load_latest(run_dir)
    assert state["epoch"] == EPOCHS
    assert_same_state(reference["method"], state["method"])


def test_all_checkpoints_damaged_is_a_clear_error(tmp_path, capsys):
    run = str(tmp_path / "run")
    _run_partly(run, 2)
    run_dir = os.path.join(run, "anm", "seed0")
    for name in (ckpt.CHECKPOINT, ckpt.PREVIOUS):
        with open(os.path.join(run_dir, name), "r+b") as f:
            f.truncate(100)
    with pytest.raises(ckpt.CheckpointError, match="both damaged"):
        ckpt.load_latest(run_dir)
    assert main(["--resume", run, "--no-progress", "--no-plots"]) == 2
    assert "both damaged" in capsys.readouterr().err


def test_sigterm_stops_cleanly_and_resumes_identically(tmp_path, reference):
    run = str(tmp_path / "run")
    run_dir = os.path.join(run, "anm", "seed0")
    proc = _start(run, resume=False)
    deadline = time.time() + 60
    metrics = os.path.join(run_dir, "metrics.jsonl")
    while time.time() < deadline and proc.poll() is None and not (
            os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before the test could signal it"
    rows_at_signal = len(open(metrics).readlines())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received" in err and "--resume" in err and "Traceback" not in err
    stopped_at = ckpt.load_latest(run_dir)["epoch"]
    # it stops at the next step, not at the end of the run (at most one more epoch can have
    # ended between the count above and the signal, and one during it)
    assert 2 <= stopped_at <= rows_at_signal + 2 and stopped_at < EPOCHS
    proc = _start(run, resume=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    state = ckpt.load_latest(run_dir)
    assert_same_state(reference["method"], state["method"])


def _flip_exponent_bit_in_a_weight(path):
    """Flip one exponent bit of a float32 weight inside checkpoint.pt (found by its bytes)."""
    state = ckpt.load_file(path)
    weights = [t for t in state["method"]["nets"][0].values()
               if t.dtype == torch.float32 and t.numel() >= 16]
    data = bytearray(open(path, "rb").read())
    at = data.find(weights[0].numpy().tobytes())
    assert at >= 0
    data[at + 3] ^= 0x40  # the top exponent bit of the first float (little-endian)
    open(path, "wb").write(bytes(data))


def test_bit_flip_in_a_tensor_without_sidecar_is_detected(tmp_path, reference):
    """The checkpoint proves its own integrity: no sidecar needed to detect a flipped bit."""
    run = str(tmp_path / "run")
    _run_partly(run, 3)
    run_dir = os.path.join(run, "anm", "seed0")
    cur = os.path.join(run_dir, ckpt.CHECKPOINT)
    for name in os.listdir(run_dir):
        if name.endswith(ckpt.SUFFIX):
            os.unlink(os.path.join(run_dir, name))
    assert ckpt.load_file(cur)["epoch"] == 3  # whole files pass on their own checksum
    _flip_exponent_bit_in_a_weight(cur)
    assert ckpt.load_file(cur) is None
    assert ckpt.load_latest(run_dir, quiet=True)["epoch"] == 2
    assert main(["--resume", run, "--no-progress", "--no-plots"]) == 0
    state = ckpt.load_latest(run_dir)
    assert state["epoch"] == EPOCHS
    assert_same_state(reference["method"], state["method"])


def _run_partly_with(run, epochs_done, flags):
    s, _, _ = settings_from(build_parser().parse_args(ARGS + flags))
    os.makedirs(run)
    _save_settings(s, run)
    run_loop(s, run, stop_after=epochs_done)


def _error_line(err):
    """The one error line of anm-train's stderr, after any progress lines; no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("anm-train: error: "), err
    assert sum(line.startswith("anm-train: error") for line in lines) == 1, err
    return lines[-1]


@pytest.mark.parametrize("flags, difference", [
    (["--seed", "1"], "seed 1, not 0"),
    (["--noise-rate", "0.2"], "noise_rate 0.2, not 0.5"),
    (["--width", "16"], "width 16, not 8"),
    (["--set", "train_subset=150"], "train_samples 150, not 200"),
])
def test_checkpoint_of_another_run_is_refused(tmp_path, capsys, flags, difference):
    run, other = str(tmp_path / "run"), str(tmp_path / "other")
    _run_partly(run, 1)
    _run_partly_with(other, 2, flags)
    run_dir = os.path.join(run, "anm", "seed0")
    for name in (ckpt.CHECKPOINT, ckpt.CHECKPOINT + ckpt.SUFFIX, ckpt.PREVIOUS,
                 ckpt.PREVIOUS + ckpt.SUFFIX):
        (theirs,) = os.listdir(os.path.join(other, "anm"))  # seed0, or seed1 for --seed 1
        shutil.copyfile(os.path.join(other, "anm", theirs, name), os.path.join(run_dir, name))
    capsys.readouterr()
    assert main(["--resume", run, "--no-progress", "--no-plots"]) == 2
    err = _error_line(capsys.readouterr().err)
    assert "belongs to another run" in err and difference in err, err
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [0]  # nothing was appended


def test_torn_metrics_row_of_a_checkpointed_epoch_is_rebuilt(tmp_path, reference):
    run = str(tmp_path / "run")
    _run_partly(run, 3)
    run_dir = os.path.join(run, "anm", "seed0")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    text = open(metrics).read()
    lost = json.loads(text.splitlines()[2])
    open(metrics, "w").write(text[: text.rindex("\n", 0, len(text) - 1) + 1] + '{"epoch": 2, "te')
    assert main(["--resume", run, "--no-progress", "--no-plots"]) == 0
    rows = [json.loads(l) for l in open(metrics)]
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert rows[2] == lost
    ref_rows = reference["metrics"]
    assert [r["test_acc"] for r in rows] == [r["test_acc"] for r in ref_rows]
    assert json.load(open(os.path.join(run_dir, "result.json")))["epochs"] == EPOCHS


def _one_line_error(capsys, argv, fragment):
    capsys.readouterr()
    assert main(argv) == 2
    assert fragment in _error_line(capsys.readouterr().err)


def test_file_system_faults_are_one_line_errors(tmp_path, capsys, monkeypatch, reference):
    run = str(tmp_path / "run")
    _run_partly(run, 2)
    run_dir = os.path.join(run, "anm", "seed0")
    resume = ["--resume", run, "--no-progress", "--no-plots"]
    # a damaged noise-label cache
    cache = os.path.join(run, "noise", "seed0.npz")
    good_cache = open(cache, "rb").read()
    open(cache, "wb").write(good_cache[:50])
    _one_line_error(capsys, resume, "noisy-label cache is damaged")
    open(cache, "wb").write(good_cache)
    # checkpoint.pt replaced by a folder
    cur = os.path.join(run_dir, ckpt.CHECKPOINT)
    os.rename(cur, cur + ".away")
    os.mkdir(cur)
    _one_line_error(capsys, resume, f"{cur} is a folder, not a checkpoint file")
    os.rmdir(cur)
    os.rename(cur + ".away", cur)
    # a full disk and a read-only folder while the next checkpoint is written
    real_write = ckpt._write_file
    for err_no, text in ((errno.ENOSPC, "No space left on device"),
                         (errno.EROFS, "Read-only file system")):
        def failing_write(folder, prefix, data, *, slow=False, err_no=err_no, text=text):
            raise OSError(err_no, text, os.path.join(folder, prefix))

        monkeypatch.setattr(ckpt, "_write_file", failing_write)
        _one_line_error(capsys, resume, text)
    monkeypatch.setattr(ckpt, "_write_file", real_write)
    assert ckpt.load_latest(run_dir)["epoch"] == 2  # nothing lost
    assert main(resume) == 0  # and after "freeing space" the run ends as if never stopped
    assert_same_state(reference["method"], ckpt.load_latest(run_dir)["method"])
