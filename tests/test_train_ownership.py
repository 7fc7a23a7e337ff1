"""One process owns a run folder: two --resume of one folder never both train it, two fresh
runs with the same --out get two folders, and a second SIGTERM while stopping cannot kill the
process before its message and exit status 143."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from anm_fast.train import ownership
from anm_fast.train.cli import _save_settings, build_parser, settings_from
from anm_fast.train.loop import run as run_loop

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks and signals")

EPOCHS = 4
ARGS = ["--dataset", "digits", "--method", "ce", "--epochs", str(EPOCHS), "--set",
        "train_subset=200", "--width", "8", "--batch-size", "32", "--threads", "1",
        "--device", "cpu", "--no-progress", "--no-plots"]


def _cli(args, slow=None):
    env = dict(os.environ)
    env.pop("ANM_FAST_TEST_SLOW_CHECKPOINT", None)
    if slow:
        env["ANM_FAST_TEST_SLOW_CHECKPOINT"] = str(slow)
    return subprocess.Popen([sys.executable, "-m", "anm_fast.train"] + args, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _started_run(tmp_path, epochs_done=1):
    run = str(tmp_path / "run")
    s, _, _ = settings_from(build_parser().parse_args(ARGS))
    os.makedirs(run)
    _save_settings(s, run)
    run_loop(s, run, stop_after=epochs_done)
    return run


def _epochs_logged(run):
    with open(os.path.join(run, "ce", "seed0", "metrics.jsonl")) as f:
        return [json.loads(line)["epoch"] for line in f]


def test_resume_of_a_folder_in_use_is_refused(tmp_path):
    run = _started_run(tmp_path)
    with ownership.own(run):  # this test process owns it now
        proc = _cli(["--resume", run, "--no-progress", "--no-plots"])
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert f"{run} is in use by another anm-train process (pid {os.getpid()})" in err
    assert _epochs_logged(run) == [0]


def test_two_resumes_at_once_train_the_run_once(tmp_path):
    run = _started_run(tmp_path)
    procs = [_cli(["--resume", run, "--no-progress", "--no-plots"], slow=0.2) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code in (0, 2) and "Traceback" not in err, err
        if code == 2:
            assert "is in use by another anm-train process" in err, err
    assert _epochs_logged(run) == list(range(EPOCHS))
    with open(os.path.join(run, "results.json")) as f:
        assert json.load(f)["results"]["ce"]["0"]["epochs"] == EPOCHS


CLAIMER = textwrap.dedent("""
    import sys, time
    from anm_fast.train import ownership
    with ownership.claim_new(sys.argv[1]) as folder:
        print(folder, flush=True)
        time.sleep(1.0)
""")


def test_runs_started_together_with_one_out_get_distinct_folders(tmp_path):
    out = str(tmp_path / "runs" / "same")
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, out], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    folders = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(folders) == sorted([out] + [f"{out}-{k}" for k in (2, 3, 4)])


def test_fresh_cli_runs_with_one_out_never_share_a_folder(tmp_path):
    out = str(tmp_path / "same")
    args = ARGS[:ARGS.index("--epochs")] + ["--epochs", "1"] + ARGS[ARGS.index("--epochs") + 2:]
    procs = [_cli(args + ["--out", out]) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sorted(os.listdir(tmp_path)) == ["same", "same-2"]
    for folder in (out, out + "-2"):
        assert _epochs_logged(folder) == [0]


def test_an_old_run_folder_without_a_lock_file_is_not_reused(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "run_config.json").write_text("{}")
    with ownership.claim_new(str(old)) as folder:
        assert folder == f"{old}-2"
    empty = tmp_path / "empty"
    empty.mkdir()
    with ownership.claim_new(str(empty)) as folder:
        assert folder == str(empty)  # an empty folder is free


@pytest.mark.parametrize("gap", [0.0, 0.3])
def test_sigterm_twice_exits_143_with_the_message(tmp_path, gap):
    """The second SIGTERM comes while the first is being handled or while the process shuts
    down; either way the exit is the clean one."""
    run = str(tmp_path / "run")
    proc = _cli(ARGS + ["--epochs", "30", "--out", run])
    metrics = os.path.join(run, "ce", "seed0", "metrics.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not os.path.exists(metrics):
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    end = time.time() + gap + 2.0
    while time.time() < end and proc.poll() is None:  # keep signalling until it has exited
        time.sleep(gap or 0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    assert "SIGTERM received" in err and "--resume" in err and "Traceback" not in err, err
