"""bench/report.py: README's performance table is generated from the committed benchmark JSON
(not typed in), the GPU goals table and the measured backend for 'auto' come from a GPU run."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report():
    spec = importlib.util.spec_from_file_location("bench_report",
                                                  os.path.join(ROOT, "bench", "report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_headline_table_is_the_generated_one():
    report = _report()
    table = report.headline(os.path.join(ROOT, "bench", "results_cpu1_process_time.json"),
                            os.path.join(ROOT, "bench", "results_wall_2threads.json"))
    assert table.count("\n") == 8  # header, rule, six rows
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert table in readme, "README's headline table differs from bench/report.py --headline"


def test_headline_says_not_measured_for_missing_rows(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    table = _report().headline(str(empty), str(empty))
    assert table.count("not measured") == 12  # six rows x two runs, nothing invented


# ------------------------------------------------ --pick-backend and the GPU goals table
def _bench(gpu, op, shape, impl, median, device="cuda"):
    return {"extra_info": {"gpu": gpu, "op": op, "shape": shape, "dtype": "fp32", "impl": impl,
                           "device": device}, "stats": {"median": median}}


def test_geometric_mean_decides_and_unpaired_or_cpu_rows_are_ignored(tmp_path):
    runs = {"benchmarks": [
        _bench("GPU A", "anm_mask", "cifar-B512", "fused-triton", 1.0),
        _bench("GPU A", "anm_mask", "cifar-B512", "fused-cuda", 2.0),      # triton 2x faster
        _bench("GPU A", "erase_fwd", "cifar-B512", "fused-triton", 3.0),
        _bench("GPU A", "erase_fwd", "cifar-B512", "fused-cuda", 2.0),     # cuda 1.5x faster
        _bench("GPU A", "anm_mask", "imagenet-B64", "fused-triton", 9.0),  # no cuda pair
        _bench("GPU B", "anm_mask", "cifar-B512", "fused-triton", 2.0),
        _bench("GPU B", "anm_mask", "cifar-B512", "fused-cuda", 1.0),
        _bench("", "anm_mask", "cifar-B512", "fused-cuda", 1.0, device="cpu"),
    ]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(runs))
    picks = _report().pick_backends([str(path)])
    assert picks["GPU A"]["faster"] == "triton" and picks["GPU A"]["pairs"] == 2
    assert abs(picks["GPU A"]["triton_over_cuda_geomean"] - (0.5 * 1.5) ** 0.5) < 1e-4
    assert picks["GPU B"] == {"faster": "cuda", "triton_over_cuda_geomean": 2.0, "pairs": 1}
    assert set(picks) == {"GPU A", "GPU B"}


def test_pick_backend_prints_and_writes_nothing_into_the_package(tmp_path, capsys):
    import anm_fast

    runs = {"benchmarks": [_bench("GPU A", "anm_mask", "cifar-B512", "fused-triton", 1.0),
                           _bench("GPU A", "anm_mask", "cifar-B512", "fused-cuda", 2.0)]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(runs))
    package = os.path.dirname(anm_fast.__file__)
    before = sorted(os.listdir(package))
    assert _report().main(["--pick-backend", str(path)]) == 0
    assert "GPU A: triton" in capsys.readouterr().out
    assert sorted(os.listdir(package)) == before


def test_gpu_goals_table_from_a_run(tmp_path):
    """Issue 3's goals are judged from the run: ratios against released / eager / compile and
    the erase pass's share of the copy bandwidth; absent rows say "not measured"."""
    def b(op, impl, median, nbytes=None, dtype="bf16", shape="cifar-B512"):
        e = {"op": op, "impl": impl, "device": "cuda", "dtype": dtype, "shape": shape,
             "gpu": "GPU A", "C": 3, "H": 32, "W": 32, "K": 512, "h": 4, "w": 4}
        if nbytes:
            e["bytes"] = nbytes
        return {"extra_info": e, "stats": {"median": median}}

    runs = {"benchmarks": [b("anm_mask", "fused", 1e-5, 100),
                           b("anm_mask", "released", 2e-2, 100),
                           b("anm_mask", "eager", 4e-5, 100), b("anm_mask", "compile", 3e-5, 100),
                           b("erase_fwd", "fused", 1e-5, 800), b("copy", "clone", 1e-5, 1000)]}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(runs))
    text = _report().render([str(path)])
    assert "| anm_mask >= 1000x faster than released | bf16 | cifar-B512 | 2000.0x | met |" in text
    assert "| anm_mask >= 5x faster than eager | bf16 | cifar-B512 | 4.0x | MISSED |" in text
    assert "| anm_mask >= 2x faster than torch.compile | bf16 | cifar-B512 | 3.0x | met |" in text
    assert "| erase pass >= 70% of copy bandwidth | bf16 | cifar-B512 | 80% of copy BW | met |" \
        in text
    assert "| anm_mask >= 5x faster than eager | bf16 | imagenet-B256 | - | not measured |" in text
