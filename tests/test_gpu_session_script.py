"""bench/gpu_session.sh without a GPU: its syntax, its step list, and its Python checks on CPU
tensors (--dry-run), so the GPU session's checklist does not first fail on the GPU machine."""
import json
import os
import subprocess
import sys

import pytest

import anm_fast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_session.sh")
CHECKS = os.path.join(ROOT, "bench", "gpu_session_checks.py")


def test_script_parses_and_names_every_step():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    usage = subprocess.run(["bash", SCRIPT], capture_output=True, text=True)
    assert usage.returncode == 2
    for step in ("all", "build", "crash", "optests", "graphs", "memcheck", "bench", "cifar"):
        assert step in usage.stderr


def test_dry_run_of_all_writes_a_summary(tmp_path):
    if not anm_fast.has_extension():
        pytest.skip("the checks call the compiled ops")
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable)
    run = subprocess.run(["bash", SCRIPT, "all"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.load(open(tmp_path / "summary.json"))
    steps = [s["step"] for s in summary["steps"]]
    assert steps[:2] == ["build", "build-check"]
    for step in ("crash", "optests-cuda", "optests-triton", "graphs", "memcheck", "bench"):
        assert step in steps
    crash = json.loads(open(tmp_path / "crash.log").read().strip().splitlines()[-1])
    assert crash["ran"] == 6 and crash["backends"] == ["cpu"]


def test_images_per_second_from_metrics(tmp_path):
    run = tmp_path / "ce"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "seconds": s})
                                                 for e, s in ((1, 30.0), (2, 10.0), (3, 10.0))))
    out = subprocess.run([sys.executable, CHECKS, "images", "--folder", str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["images_per_s"] == {"ce/metrics.jsonl": 5000.0}
