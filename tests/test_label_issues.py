"""anm_fast.label_issues: the ranked table of probably wrong labels, and what the trainer writes."""
import csv
import json

import numpy as np
import pytest
import torch

from anm_fast.label_issues import label_issues
from anm_fast.train.loop import Settings, run

TINY = dict(train_subset=160, width=8, warmup=1, batch_size=32, threads=1)


def test_order_columns_and_counts_from_quality():
    given = np.array([0, 1, 2, 1, 0])
    true = np.array([0, 2, 2, 1, 1])            # samples 1 and 4 are mislabeled
    q = np.array([0.9, 0.0, 0.8, 0.3, 0.0])
    probs = np.eye(3)[[0, 2, 2, 1, 1]] * 0.8 + 0.2 / 3
    probs[4, 0] = 0.5  # sample 4's given label is believed more than sample 1's: ranks second
    t = label_issues(given, quality=q, probs=probs, true_labels=true,
                     class_names=["cat", "dog", "fox"], paths=[f"c/{i}.png" for i in range(5)])
    assert t.column("index").tolist() == [1, 4, 3, 2, 0]
    assert t.columns == ["index", "path", "given_label", "predicted_label", "quality", "suspect",
                         "true_label", "given_class", "predicted_class", "true_class"]
    first = t.rows[0]
    assert first == {"index": 1, "path": "c/1.png", "given_label": 1, "predicted_label": 2,
                     "quality": 0.0, "suspect": 1, "true_label": 2, "given_class": "dog",
                     "predicted_class": "fox", "true_class": "fox"}
    # flagged: 1, 4, 3 (q < 0.5); truly wrong: 1, 4 -> precision 2/3, recall 1, top-2 both wrong
    assert t.summary() == {"samples": 5, "flagged": 3, "threshold": 0.5, "truly_mislabeled": 2,
                           "precision": 2 / 3, "recall": 1.0, "precision_at_k": 1.0}


def test_without_truth_or_flags_metrics_are_absent():
    t = label_issues([0, 1, 1], quality=[1.0, 0.9, 0.7])
    assert t.summary() == {"samples": 3, "flagged": 0, "threshold": 0.5}
    assert "true_label" not in t.columns and t.rows[0]["predicted_label"] == ""
    s = label_issues([0, 1], quality=[0.9, 0.8], true_labels=[0, 1]).summary()
    assert s["truly_mislabeled"] == 0 and "precision" not in s and "recall" not in s


def test_from_losses_flags_the_high_loss_samples():
    g = torch.Generator().manual_seed(0)
    losses = torch.cat([torch.rand(90, generator=g) * 0.2, 3 + torch.rand(10, generator=g)])
    t = label_issues(torch.zeros(100, dtype=torch.int64), losses=losses)
    assert sorted(t.column("index")[:10].tolist()) == list(range(90, 100))
    assert t.summary()["flagged"] == 10


def test_csv_round_trip(tmp_path):
    t = label_issues([2, 0, 1], quality=[0.25, 0.75, 0.5], probs=torch.eye(3))
    t.write_csv(str(tmp_path / "t.csv"))
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == [0, 2, 1]
    assert [float(r["quality"]) for r in rows] == [0.25, 0.5, 0.75]
    assert [r["suspect"] for r in rows] == ["1", "0", "0"] and rows[0]["predicted_label"] == "0"


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "exactly one of quality"),
    (dict(quality=[0.5] * 3, losses=[1.0] * 3), "exactly one of quality"),
    (dict(quality=[0.5, 0.5]), r"quality must be a vector of shape \(3,\)"),
    (dict(quality=[0.5, 2.0, 0.1]), r"quality must lie in \[0, 1\]"),
    (dict(losses=[0.5, float("nan"), 0.1]), "losses holds 1 NaN"),
    (dict(quality=[0.5] * 3, probs=np.ones((3, 2))), r"given_labels must lie in \[0, 2\)"),
    (dict(quality=[0.5] * 3, true_labels=[0.0, 1.0, 2.0]), "true_labels must hold integer"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        label_issues([0, 1, 2], **kwargs)


def _strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


@pytest.mark.parametrize("noise", ["sym", "none"])
def test_trainer_writes_table_that_agrees_with_results(tmp_path, noise):
    s = Settings(dataset="digits", noise=noise, noise_rate=0.5, methods=["ce"], seeds=[0],
                 device="cpu", hp={**TINY, "epochs": 1}, progress=False, plots=False)
    run(s, str(tmp_path))
    with open(tmp_path / "ce" / "seed0" / "label_issues.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["index"]) for r in rows) == list(range(160))
    q = [float(r["quality"]) for r in rows]
    assert q == sorted(q)
    result = _strict_json(tmp_path / "ce" / "seed0" / "result.json")
    li = result["label_issues"]
    assert _strict_json(tmp_path / "results.json")["results"]["ce"]["0"]["label_issues"] == li
    flagged = [r for r in rows if r["suspect"] == "1"]
    assert li["flagged"] == len(flagged) == sum(v < 0.5 for v in q)
    if noise == "none":  # labels as given: nothing needs or claims the truth
        assert "true_label" not in rows[0] and "precision" not in li
        assert "quality_auc" not in result and "realised_noise_rate" not in result
        return
    wrong = [r["given_label"] != r["true_label"] for r in rows]
    assert li["truly_mislabeled"] == sum(wrong)
    assert li["precision"] == pytest.approx(
        sum(r["given_label"] != r["true_label"] for r in flagged) / len(flagged))
    assert li["precision_at_k"] == pytest.approx(np.mean(wrong[:sum(wrong)]))
