"""bench/summarize.py and bench/report.py: the committed figures (bench/RESULTS.md, README's
performance table, the figures of docs/PERFORMANCE_GOALS.md) are the ones rendered from the
committed summary bench/results.json, and rendering invents nothing."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = os.path.join(ROOT, "bench", "results.json")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report, summarize = _load("report"), _load("summarize")


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _generated_part(text):
    return text.split(report.BEGIN, 1)[1].split(report.END, 1)[0]


def test_committed_results_are_the_rendered_ones():
    runs = report.load(SUMMARY)
    assert _read("bench", "RESULTS.md") == report.render_results(runs, report.notes_text())
    table = report.headline(runs)
    assert table.count("\n") == 8  # header, rule, six rows
    assert _generated_part(_read("README.md")) == table
    assert _generated_part(_read("docs", "PERFORMANCE_GOALS.md")) == report.figures_table(runs)


def test_missing_runs_and_rows_say_not_measured(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"columns": summarize.COLUMNS, "runs": {}}))
    runs = report.load(str(path))
    assert report.headline(runs).count("not measured") == 12  # six rows x two runs
    assert "GPU (CUDA fp32 and bf16, Triton and CUDA backends): not measured" in \
        report.render_results(runs)


def _raw_run(benches, timer="perf_counter"):
    """A pytest-benchmark JSON file's content, as much of it as summarize.py reads."""
    return {"datetime": "2026-01-01T00:00:00", "commit_info": {"id": "0123456789abcdef",
                                                               "branch": "main", "dirty": False},
            "machine_info": {"node": "box", "system": "Linux", "release": "6", "python_version":
                             "3.11", "cpu": {"brand_raw": "CPU X", "count": 4}},
            "benchmarks": [{"extra_info": e, "stats": {"median": m}, "options": {"timer": timer}}
                           for e, m in benches]}


def _gpu_bench(op, impl, median, nbytes=100, dtype="bf16", shape="cifar-B512"):
    return ({"op": op, "impl": impl, "device": "cuda", "dtype": dtype, "shape": shape,
             "gpu": "GPU A", "C": 3, "H": 32, "W": 32, "K": 512, "h": 4, "w": 4, "bytes": nbytes,
             "torch": "2.11", "threads": 16, "smoke": False, "loadavg_1m": 0.5}, median)


def _summary_of(tmp_path, benches):
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(_raw_run(benches)))
    out = tmp_path / "summary.json"
    assert summarize.main([str(raw), "--run", "gpu", "--title", "GPU: A", "--into",
                           str(out)]) == 0
    return report.load(str(out))


def test_summary_keeps_medians_bytes_and_conditions(tmp_path):
    runs = _summary_of(tmp_path, [_gpu_bench("anm_mask", "fused", 1e-5),
                                  _gpu_bench("copy", "clone", 2e-5, nbytes=1000)])
    (run,) = runs
    assert run.time("anm_mask", "cuda", "bf16", "cifar-B512", "fused") == 1e-5
    assert run.nbytes("copy", "cuda", "bf16", "cifar-B512", "clone") == 1000
    assert run.info["gpu"] == "GPU A" and run.info["commit"] == "0123456789 (main)"
    assert run.info["shapes"] == {"cifar-B512": "x 3x32x32, fmap 512x4x4"}


def test_gpu_figures_from_a_run(tmp_path):
    """Ratios against released / eager / compile and the erase pass's share of the copy
    bandwidth; shapes and dtypes the run did not time say "not measured"."""
    runs = _summary_of(tmp_path, [_gpu_bench("anm_mask", "fused", 1e-5),
                                  _gpu_bench("anm_mask", "released", 2e-2),
                                  _gpu_bench("anm_mask", "eager", 4e-5),
                                  _gpu_bench("anm_mask", "compile", 3e-5),
                                  _gpu_bench("erase_fwd", "fused", 1e-5, nbytes=800),
                                  _gpu_bench("copy", "clone", 1e-5, nbytes=1000)])
    table = report.figures_table(runs)
    assert "| anm_mask speed-up over the released procedure | cuda bf16 cifar-B512 | 2000x |" \
        in table
    assert "| anm_mask speed-up over the eager reference | cuda bf16 cifar-B512 | 4.0x |" in table
    assert "| anm_mask speed-up over torch.compile | cuda bf16 cifar-B512 | 3.0x |" in table
    assert "| erase pass bandwidth / copy bandwidth | cuda bf16 cifar-B512 | 80% |" in table
    assert "| anm_mask speed-up over the eager reference | cuda bf16 imagenet-B256 | " \
           "not measured |" in table
    assert "GPU: GPU A" in report.render_results(runs)


def test_triton_over_cuda_is_a_geometric_mean_over_pairs(tmp_path):
    runs = _summary_of(tmp_path, [_gpu_bench("anm_mask", "fused-triton", 1.0),
                                  _gpu_bench("anm_mask", "fused-cuda", 2.0),     # triton 2x faster
                                  _gpu_bench("erase_fwd", "fused-triton", 3.0),
                                  _gpu_bench("erase_fwd", "fused-cuda", 2.0),    # cuda 1.5x faster
                                  _gpu_bench("anm_mask", "fused-triton", 9.0,
                                             shape="imagenet-B64")])               # no cuda pair
    value, pairs = report.triton_over_cuda(runs[0])
    assert pairs == 2 and abs(value - (0.5 * 1.5) ** 0.5) < 1e-12
    assert "Triton faster on this GPU" in report.render_results(runs)


def test_rendering_writes_only_where_it_is_told(tmp_path):
    """The report writes the files it is given and nothing else (in particular nothing into the
    package)."""
    import anm_fast

    package = os.path.dirname(anm_fast.__file__)
    before = sorted(os.listdir(package))
    goals = tmp_path / "goals.md"
    goals.write_text("intro\n" + report.BEGIN + "old\n" + report.END + "\nend\n")
    assert report.main([SUMMARY, "--results", str(tmp_path / "R.md"), "--goals", str(goals)]) == 0
    assert goals.read_text().startswith("intro\n") and goals.read_text().endswith("\nend\n")
    assert "old" not in goals.read_text()
    assert sorted(os.listdir(package)) == before
    assert sorted(os.listdir(tmp_path)) == ["R.md", "goals.md"]


def test_floor_figure_is_the_interleaved_pairs_ratio_where_measured(tmp_path):
    """The memory-floor figure is the ratio floor_ratio measured in interleaved pairs, not the
    ratio of the two medians, when the run has it."""
    def cpu(op, impl, median, **extra):
        e, m = _gpu_bench(op, impl, median, dtype="fp32")
        return ({**e, "device": "cpu", **extra}, m)

    benches = [cpu("anm_mask", "fused", 3.0), cpu("copy", "clone", 2.0, bytes=1000)]
    medians_only = report.figures_table(_summary_of(tmp_path, benches))
    assert "| anm_mask time / memory-floor copy | cpu fp32 cifar-B512 | 1.50x |" in medians_only
    runs = _summary_of(tmp_path, benches + [cpu("floor_ratio", "fused", 5.0, ratio=1.25)])
    assert "| anm_mask time / memory-floor copy | cpu fp32 cifar-B512 | 1.25x |" in \
        report.figures_table(runs)
    assert "interleaved pairs (median of the pairs' ratios): 1.25x" in report.render_results(runs)
