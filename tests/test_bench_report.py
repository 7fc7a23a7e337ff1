"""README's performance table is generated from the committed benchmark JSON, not typed in:
bench/report.py --headline must reproduce it exactly."""
import importlib.util
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
    import json

    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmarks": []}))
    table = _report().headline(str(empty), str(empty))
    assert table.count("not measured") == 12  # six rows x two runs, nothing invented


def test_gpu_session_script_parses_and_explains_its_steps(tmp_path):
    import subprocess

    script = os.path.join(ROOT, "bench", "gpu_session.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    r = subprocess.run(["bash", script, "help"], capture_output=True, text=True,
                       env=dict(os.environ, OUT=str(tmp_path)))
    assert r.returncode == 2 and "build|test|sanitize|bench" in r.stderr
