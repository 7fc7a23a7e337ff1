"""End-to-end trainer runs on a small digits subset: every method, exact resume, crash safety."""
import glob
import json
import os

import pytest
import torch

from anm_fast.testing import assert_same_state
from anm_fast.train import checkpoint as ckpt_mod
from anm_fast.train.cli import main
from anm_fast.train.loop import Settings, run
from anm_fast.train.methods import METHODS

TINY = dict(train_subset=160, width=8, warmup=1, batch_size=32, threads=1)


def settings(methods, epochs, **hp):
    return Settings(dataset="digits", noise="sym", noise_rate=0.5, methods=list(methods),
                    seeds=[0], device="cpu", hp={**TINY, "epochs": epochs, **hp},
                    progress=False, plots=False)


@pytest.mark.parametrize("method", list(METHODS))
def test_two_epochs_each_method(tmp_path, method):
    out = run(settings([method], 2), str(tmp_path))
    r = out["results"][method]["0"]
    assert r["epochs"] == 2 and 0.0 <= r["last"] <= 1.0
    assert 0.0 <= r["quality_auc"] <= 1.0 and 0.3 < r["realised_noise_rate"] < 0.6
    rows = [json.loads(l) for l in open(tmp_path / method / "seed0" / "metrics.jsonl")]
    assert [row["epoch"] for row in rows] == [0, 1]
    assert "quality_auc" in rows[1] or method == "ce"  # epoch 1 is past the 1-epoch warm-up
    assert os.path.exists(tmp_path / "noise" / "seed0.npz")


def _weights(folder, method):
    state = torch.load(os.path.join(folder, method, "seed0", "checkpoint.pt"), weights_only=True)
    return state


@pytest.mark.parametrize("method,hp", [("anm", {}), ("dividemix-anm", {}),
                                       ("anm", {"loss_history": True})],
                         ids=["anm", "dividemix-anm", "anm-loss-history"])
def test_resume_gives_identical_weights(tmp_path, method, hp):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    run(settings([method], 4, **hp), full)
    out = run(settings([method], 4, **hp), part, stop_after=2)
    assert out["complete"] is False
    assert _weights(part, method)["epoch"] == 2
    if hp.get("loss_history"):  # the history is checkpointed: one loss vector per ANM epoch
        assert len(_weights(part, method)["method"]["histories"][0]["epochs"]) == 1
    run(settings([method], 4, **hp), part)  # picks up the checkpoint of epoch 2
    a, b = _weights(full, method), _weights(part, method)
    assert b["epoch"] == 4
    assert_same_state(a["method"], b["method"])
    rows = [json.loads(l) for l in open(os.path.join(part, method, "seed0", "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]


def test_crash_during_checkpoint_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # second epoch's checkpoint: write part of it, then die
            f.write(b"partial garbage")
            raise KeyboardInterrupt("killed while writing")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        run(settings(["ce"], 3), str(tmp_path))
    folder = tmp_path / "ce" / "seed0"
    assert sorted(os.listdir(folder)) == ["checkpoint.pt", "checkpoint.pt.sha256",
                                          "metrics.jsonl"]  # no temp file left
    state = ckpt_mod.load(str(folder / "checkpoint.pt"))
    assert state["epoch"] == 1
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    out = run(settings(["ce"], 3), str(tmp_path))  # and the run continues from it
    assert out["results"]["ce"]["0"]["epochs"] == 3


def test_cli_default_style_run_and_no_overwrite(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["--epochs", "2", "--set", "train_subset=120", "--width", "8", "--warmup", "1",
            "--threads", "1", "--out", out, "--no-progress", "--compare", "ce,anm"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "last-epoch acc" in text and "run folder" in text
    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["results"]) == {"ce", "anm"}
    for png in ("accuracy.png", "ce/seed0/quality_hist.png", "anm/seed0/gallery.png"):
        assert os.path.getsize(os.path.join(out, png)) > 1000
    # same --out again: a new folder, the first run untouched
    assert main(args[:-2] + ["--method", "ce"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy last epoch" in text and "quality ROC AUC" in text
    assert os.path.exists(out + "-2/results.json")
    # --resume of a finished run just reports it
    assert main(["--resume", out, "--no-progress", "--no-plots"]) == 0


def test_cifar_folder_with_human_labels_end_to_end(tmp_path, capsys):
    import numpy as np
    from test_train_data import write_cifar10

    write_cifar10(tmp_path / "data", n_train=40, n_test=10)
    clean = []
    import pickle
    for i in range(1, 6):
        with open(tmp_path / "data" / "cifar-10-batches-py" / f"data_batch_{i}", "rb") as f:
            clean += list(pickle.load(f)["labels"])
    clean = np.asarray(clean)
    worse = clean.copy()
    worse[:10] = (worse[:10] + 1) % 10
    torch.save({"worse_label": worse, "aggre_label": clean}, tmp_path / "CIFAR-10_human.pt")
    base = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
            "--width", "4", "--batch-size", "16", "--no-progress", "--no-plots",
            "--noise-file", str(tmp_path / "CIFAR-10_human.pt"), "--method", "ce"]
    assert main(base + ["--noise", "human:worse_label", "--out", str(tmp_path / "r")]) == 0
    res = json.load(open(tmp_path / "r" / "results.json"))["results"]["ce"]["0"]
    assert res["realised_noise_rate"] == 0.25
    # wrong length and out-of-range label files fail with a clear message, before training
    np.save(tmp_path / "short.npy", worse[:30])
    assert main(base[:-4] + ["--noise", "human", "--noise-file", str(tmp_path / "short.npy"),
                             "--method", "ce", "--out", str(tmp_path / "r2")]) == 2
    assert "30 labels but the training set has 40" in capsys.readouterr().err
    bad = worse.copy()
    bad[3] = 10
    np.save(tmp_path / "bad.npy", bad)
    assert main(base[:-4] + ["--noise", "human", "--noise-file", str(tmp_path / "bad.npy"),
                             "--method", "ce", "--out", str(tmp_path / "r3")]) == 2
    assert "outside [0, 10)" in capsys.readouterr().err
    assert main(base[:4] + ["--data-dir", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "r4")]) == 2
    assert "never downloads" in capsys.readouterr().err


def test_image_folder_with_noisy_label_list_end_to_end(tmp_path):
    from test_train_data import write_image_folder

    files = write_image_folder(tmp_path / "imgs", per_class=4)
    (tmp_path / "noisy.txt").write_text(
        "\n".join(f"{f} {int(f.startswith('dog')) if i % 4 else 1 - int(f.startswith('dog'))}"
                  for i, f in enumerate(files)))
    out = tmp_path / "r"
    assert main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "imgs"), "--noise",
                 "human", "--noise-file", str(tmp_path / "noisy.txt"), "--model", "small_cnn",
                 "--width", "4", "--image-size", "16", "--epochs", "1", "--batch-size", "4",
                 "--method", "ce", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    res = json.load(open(out / "results.json"))["results"]["ce"]["0"]
    assert res["realised_noise_rate"] == 0.25


def test_resume_with_more_epochs(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["--epochs", "2", "--set", "train_subset=100", "--width", "4", "--warmup", "1",
                 "--method", "ce", "--out", out, "--no-progress", "--no-plots"]) == 0
    assert main(["--resume", out, "--epochs", "3", "--no-progress", "--no-plots"]) == 0
    res = json.load(open(os.path.join(out, "results.json")))["results"]["ce"]["0"]
    assert res["epochs"] == 3
    state = torch.load(os.path.join(out, "ce", "seed0", "checkpoint.pt"), weights_only=True)
    assert state["method"]["scheds"][0]["T_max"] == 3
