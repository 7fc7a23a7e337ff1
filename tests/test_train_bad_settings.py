"""anm-train with settings that cannot train: each must stop with exit status 2 and one line
`anm-train: error: ...` naming the flag and what it must be, before any data set is loaded or
any folder is made. docs/BAD_INPUTS.md lists each case with its actual message
(tests/render_bad_inputs.py writes that table from SETTINGS_CASES)."""
import json
import os

import pytest
import torch

from anm_fast.train.cli import main

BASE = ["--dataset", "digits", "--method", "ce", "--epochs", "1", "--set", "train_subset=64",
        "--width", "4", "--threads", "1", "--device", "cpu", "--no-progress", "--no-plots"]

# (description, extra flags, message fragment); a later flag overrides the same flag in BASE.
SETTINGS_CASES = [
    ("--batch-size -5", ["--batch-size", "-5"], "--batch-size must be an integer >= 1, got -5"),
    ("--batch-size 0", ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    ("--epochs 0", ["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    ("--lr nan", ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    ("--lr -0.1", ["--lr", "-0.1"], "--lr must be a finite number > 0"),
    ("--momentum 1.5", ["--momentum", "1.5"], "--momentum must be a finite number >= 0 and <= 1"),
    ("--weight-decay inf", ["--weight-decay", "inf"], "--weight-decay must be a finite number"),
    ("--width 0", ["--width", "0"], "--width must be an integer >= 1"),
    ("--noise-rate 1.5", ["--noise-rate", "1.5"], "--noise-rate must be a number in [0, 1]"),
    ("--noise-rate nan", ["--noise-rate", "nan"], "--noise-rate must be a number in [0, 1]"),
    ("--seeds 0", ["--seeds", "0"], "--seeds must be >= 1"),
    ("--device meta", ["--device", "meta"], "anm-train trains on cpu or cuda, not meta"),
    ("--device nonsense", ["--device", "gpu0"], "is not a device"),
    ("--set warmup=-1", ["--set", "warmup=-1"], "--warmup must be an integer >= 0"),
    ("--set lambda_u=NaN", ["--set", "lambda_u=NaN"], "--lambda-u must be a finite number"),
    ("--set batch_size=true (config value of the wrong type)", ["--set", "batch_size=true"],
     "--batch-size must be an integer"),
    ("--schedule linear", ["--schedule", "linear"], "--schedule must be one of step, cosine"),
    ("--anm-area-hi 1e39", ["--anm-area-hi", "1e39"], "ANMConfig needs"),
    ("--anm-label-gain nan", ["--anm-label-gain", "nan"], "ANMConfig.label_gain"),
]


def run_cli(argv, capsys):
    """(exit status, stderr) of an in-process anm-train call."""
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, fragment, after_progress=False):
    """Exit 2 and one error line (after_progress: the last line, after the run's start lines)."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("anm-train: error: "), err
    assert len(lines) == 1 or after_progress, err
    assert fragment in lines[-1], err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", SETTINGS_CASES, ids=[c[0] for c in SETTINGS_CASES])
def test_bad_setting_stops_before_anything_is_made(tmp_path, capsys, monkeypatch, case):
    _, flags, fragment = case
    from anm_fast.train import loop

    def no_data(*a, **k):
        raise AssertionError("a data set was loaded for settings that cannot train")

    monkeypatch.setattr(loop, "load_dataset", no_data)
    out = tmp_path / "run"
    assert_one_line_error(*run_cli(BASE + flags + ["--out", str(out)], capsys), fragment)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu(tmp_path, capsys):
    code, err = run_cli(BASE + ["--device", "cuda", "--out", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, "--device cuda: no CUDA GPU is visible to torch")
    assert not (tmp_path / "run").exists()


def test_bad_setting_on_resume_is_refused_too(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(BASE + ["--out", str(out)]) == 0
    capsys.readouterr()
    code, err = run_cli(["--resume", str(out), "--epochs", "0", "--no-progress"], capsys)
    assert_one_line_error(code, err, "--epochs must be an integer >= 1, got 0")


def test_damaged_config_files_name_the_file(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text('{"lr": 0.1,')
    code, err = run_cli(BASE + ["--config", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, f"{bad}: not valid JSON")
    bad_toml = tmp_path / "c.toml"
    bad_toml.write_text("lr = = 1")
    code, err = run_cli(BASE + ["--config", str(bad_toml), "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, f"{bad_toml}: not valid TOML")


def test_truncated_run_config_names_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(BASE + ["--out", str(out)]) == 0
    capsys.readouterr()
    path = out / "run_config.json"
    path.write_text(path.read_text()[:40])
    code, err = run_cli(["--resume", str(out), "--no-progress"], capsys)
    assert_one_line_error(code, err, f"{path}: not valid JSON")
    path.write_text(json.dumps(["digits", 0.5]))
    code, err = run_cli(["--resume", str(out), "--no-progress"], capsys)
    assert_one_line_error(code, err, f"{path}: not the settings of an anm-train run")


def test_label_file_that_is_a_fifo_or_a_device(tmp_path, capsys):
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.npy"
    zero.symlink_to("/dev/zero")
    for path, kind in ((fifo, "a FIFO (named pipe), not a label file"),
                       (zero, "a character device, not a label file")):
        code, err = run_cli(BASE + ["--noise", "human", "--noise-file", str(path),
                                    "--out", str(tmp_path / path.name) + "-run"], capsys)
        assert_one_line_error(code, err, f"{path}: {kind}", after_progress=True)
