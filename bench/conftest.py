"""Benchmark set-up: collect bench_*.py files, make bench/ importable, fix seeds and threads.

Run:   pytest bench/ --benchmark-only [--benchmark-json=out.json]
Smoke: ANM_BENCH_SMOKE=1 pytest bench/ --benchmark-only   (tiny shapes, few rounds; for CI)
The root pytest config only collects tests/; naming bench/ on the command line collects this folder.
Threads: ANM_BENCH_THREADS=N calls torch.set_num_threads(N) (default: torch's default, the
number of cores). On a machine shared with other processes, wall-clock medians of multi-threaded
runs are inflated by descheduled threads; `ANM_BENCH_THREADS=1 pytest bench/ --benchmark-only
--benchmark-timer=time.process_time` gives single-core CPU-time figures that such load barely moves
(report.py prints the timer and thread count with the figures).
Benchmarks never assert on timing.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if os.environ.get("ANM_BENCH_THREADS", "").strip():
    torch.set_num_threads(int(os.environ["ANM_BENCH_THREADS"]))
    try:  # the released port's OpenCV gets the same thread budget
        import cv2
        cv2.setNumThreads(int(os.environ["ANM_BENCH_THREADS"]))
    except Exception:
        pass


def pytest_collect_file(file_path, parent):
    # test_*.py is collected by pytest's default rule; also collect bench_*.py here.
    # Files named on the command line are collected by pytest itself: do not collect them twice.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_report_header(config):
    from _common import SMOKE, HAS_CUDA
    import anm_fast
    dev = torch.cuda.get_device_name(0) if HAS_CUDA else "no GPU"
    return (f"anm_fast bench: smoke={SMOKE} torch={torch.__version__} threads="
            f"{torch.get_num_threads()} extension={anm_fast.has_extension()} device={dev}")


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield
