"""Presets chosen from the data, settings printed and saved whole, arguments checked before any
data loads, image folders trained on their own labels, and resume messages."""
import csv
import json
import os

import numpy as np
import pytest

from anm_fast.train.cli import build_parser, main
from anm_fast.train.presets import PRESETS, choose_preset

TINY = ["--train-subset", "120", "--width", "8", "--warmup", "1", "--batch-size", "32",
        "--threads", "1", "--no-plots", "--no-progress", "--device", "cpu"]


def test_choose_preset_from_data_and_device():
    assert choose_preset("digits", "cpu")[0] == "digits"
    assert choose_preset("cifar10", "cuda")[0] == "cifar10"
    name, reason = choose_preset("imagefolder", "cpu", 3000, (28, 28))
    assert name == "small-images-cpu" and "3000 training images of 28x28 on cpu" in reason
    assert choose_preset("imagefolder", "cuda", 3000, (28, 28))[0] == "small-images-gpu"
    assert choose_preset("imagefolder", "cuda", 50000, (256, 256))[0] == "clothing1m"
    assert all(isinstance(v, dict) for v in PRESETS.values())


def test_every_flag_has_help():
    missing = [a.option_strings for a in build_parser()._actions if not a.help]
    assert missing == []
    text = build_parser().format_help()
    assert "timm:NAME" in text and "small-images-cpu" in text and "none (train on" in text


@pytest.mark.parametrize("args,message", [
    (["--model", "foo"], "unknown model 'foo'"),
    (["--model", "timm:no_such_net"], "timm has no model 'no_such_net'"),
    (["--noise", "human"], "--noise human needs --noise-file"),
    (["--dataset", "imagefolder", "--data-dir", "/nonexistent/d"], "needs --data-dir pointing"),
])
def test_bad_arguments_fail_before_a_folder_is_made(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(args + ["--out", str(out)] + TINY) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def write_digits_folder(root, n_train=None):
    """scikit-learn's digits as PNG files: train/<digit>/<i>.png, test/<digit>/<i>.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d.target))
    n_test = len(order) // 4
    for k, i in enumerate(order if n_train is None else order[:n_train + n_test]):
        part = "test" if k < n_test else "train"
        folder = root / part / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 15.9).astype(np.uint8)).resize((16, 16)).save(
            folder / f"{i}.png")


def test_image_folder_trains_on_its_own_labels_and_resumes(tmp_path, capsys):
    write_digits_folder(tmp_path / "d", n_train=120)
    out = tmp_path / "run"
    assert main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "d"), "--method", "ce",
                 "--epochs", "1", "--out", str(out)] + TINY) == 0
    err = capsys.readouterr().err
    assert "preset small-images-cpu: 120 training images of 16x16 on cpu" in err
    assert "labels as given" in err
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["noise"] == "none" and cfg["preset"] == "small-images-cpu"
    assert os.path.isabs(cfg["data_dir"]) and cfg["resolved"]["ce"]["epochs"] == 1
    assert cfg["resolved"]["ce"]["model"] == "small_cnn"
    with open(out / "ce" / "seed0" / "label_issues.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 120 and "true_label" not in rows[0]
    assert all(r["path"].split("/")[0] == r["given_label"] for r in rows)  # folder = class
    result = json.loads((out / "results.json").read_text())
    assert "quality_auc" not in result["results"]["ce"]["0"]
    # resume from another folder with a longer run: the saved absolute path is found, the new
    # length is saved, and the trainer says where it resumes
    os.chdir(tmp_path)
    (out / "ce" / "seed0" / "result.json").unlink()  # pretend epoch 1 was cut short
    assert main(["--resume", str(out), "--epochs", "2", "--no-progress", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "resuming at epoch 2 of 2" in err
    assert json.loads((out / "run_config.json").read_text())["resolved"]["ce"]["epochs"] == 2


def test_named_preset_and_timm_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--preset", "small-images-cpu", "--model", "timm:resnet10t", "--method", "ce",
                 "--epochs", "1", "--out", str(out)] + TINY) == 0
    assert "preset small-images-cpu: chosen with --preset" in capsys.readouterr().err
    assert json.loads((out / "run_config.json").read_text())["resolved"]["ce"]["model"] == \
        "timm:resnet10t"


def test_collapse_after_warmup_is_reported_once(capsys):
    from anm_fast.train.single_run import _collapse_warning

    best, warned = 0.0, False
    for epoch, acc in enumerate([0.6, 0.8, 0.12, 0.11]):
        best, warned = _collapse_warning("anm", 0, epoch, acc, best, {"warmup": 2}, 10, warned)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "fell from 80.0% to 12.0%" in err and "--lr" in err
