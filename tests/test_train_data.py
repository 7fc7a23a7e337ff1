"""Trainer data loading on tiny fixture data sets written here; label files; clear errors."""
import os
import pickle

import numpy as np
import pytest
import torch

from anm_fast.train import data as D
from anm_fast.train.augment import augment
from anm_fast.train.label_files import load_label_file
from anm_fast.train.cli import main, settings_from, build_parser


def write_cifar10(root, n_train=20, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        d = {"data": rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8),
             "labels": list(rng.integers(0, 10, n_train // 5))}
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(d, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     "labels": list(rng.integers(0, 10, n_test))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def write_cifar100(root, n=200):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    from anm_fast.train.noise import CIFAR100_COARSE

    fine = np.arange(n) % 100
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "fine_labels": list(fine),
                         "coarse_labels": [CIFAR100_COARSE[c] for c in fine]}, f)


def test_cifar10_folder(tmp_path):
    write_cifar10(tmp_path)
    b = D.load_dataset("cifar10", str(tmp_path))
    assert b.x_train.shape == (20, 3, 32, 32) and b.x_test.shape == (10, 3, 32, 32)
    assert b.num_classes == 10 and b.class_names[3] == "c3" and b.flip and b.pad == 4
    # the folder itself may also be given
    b2 = D.load_dataset("cifar10", str(tmp_path / "cifar-10-batches-py"))
    assert torch.equal(b.x_train, b2.x_train)


def test_cifar100_folder_coarse(tmp_path):
    write_cifar100(tmp_path)
    b = D.load_dataset("cifar100", str(tmp_path))
    assert b.num_classes == 100 and b.coarse is not None
    from anm_fast.train.noise import CIFAR100_COARSE
    assert b.coarse.tolist() == CIFAR100_COARSE


def test_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        D.load_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        D.load_dataset("cifar100", None)
    with pytest.raises(FileNotFoundError, match="train/"):
        D.load_dataset("imagefolder", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset("mnist")


def write_image_folder(root, per_class=3):
    from PIL import Image

    files = []
    for part in ("train", "test"):
        for ci, c in enumerate(("cat", "dog")):
            (root / part / c).mkdir(parents=True)
            for i in range(per_class):
                arr = np.full((10, 12, 3), 40 + 100 * ci + i, np.uint8)
                Image.fromarray(arr).save(root / part / c / f"{i}.png")
                if part == "train":
                    files.append(f"{c}/{i}.png")
    return files


def test_image_folder_and_label_list(tmp_path):
    files = write_image_folder(tmp_path)
    b = D.load_dataset("imagefolder", str(tmp_path), image_size=16)
    assert b.x_train.shape == (6, 3, 16, 16) and b.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert b.class_names == ["cat", "dog"]
    # Clothing1M-style "<path> <label>" list, in any order
    lst = tmp_path / "noisy.txt"
    lst.write_text("\n".join(f"{f} {1 - int(f.startswith('dog'))}" for f in reversed(files)))
    y = load_label_file(str(lst), None, n=6, num_classes=2, train_files=b.train_files)
    assert y.tolist() == [1, 1, 1, 0, 0, 0]
    # one label per line, training order
    lst2 = tmp_path / "plain.txt"
    lst2.write_text("0\n1\n0\n1\n0\n1\n")
    assert load_label_file(str(lst2), None, n=6, num_classes=2).tolist() == [0, 1] * 3


def test_label_file_errors(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("0\n1\n")
    with pytest.raises(ValueError, match="2 labels but the training set has 6"):
        load_label_file(str(p), None, n=6, num_classes=2)
    p2 = tmp_path / "range.npy"
    np.save(p2, np.array([0, 1, 2, 1, 0, 5]))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        load_label_file(str(p2), None, n=6, num_classes=2)
    with pytest.raises(FileNotFoundError):
        load_label_file(str(tmp_path / "missing.pt"), None, n=6, num_classes=2)


def test_cifar_n_label_file(tmp_path):
    # CIFAR-10N ships a torch.save'd dict of numpy arrays; torch >= 2.6 refuses numpy objects
    # under its default weights_only=True: the loader must still read it without full unpickling.
    rng = np.random.default_rng(0)
    d = {"clean_label": rng.integers(0, 10, 50), "worse_label": rng.integers(0, 10, 50),
         "aggre_label": rng.integers(0, 10, 50)}
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(d, path)
    y = load_label_file(str(path), "worse_label", n=50, num_classes=10)
    assert (y == d["worse_label"]).all()
    with pytest.raises(ValueError, match="several label lists"):
        load_label_file(str(path), None, n=50, num_classes=10)
    with pytest.raises(ValueError, match="no label list 'noisy_label'"):
        load_label_file(str(path), "noisy_label", n=50, num_classes=10)
    # a tensor-valued dict and an .npz work too
    torch.save({"noisy_label": torch.as_tensor(d["aggre_label"])}, tmp_path / "t.pt")
    assert (load_label_file(str(tmp_path / "t.pt"), None, n=50, num_classes=10)
            == d["aggre_label"]).all()
    np.savez(tmp_path / "l.npz", worse_label=d["worse_label"])
    assert (load_label_file(str(tmp_path / "l.npz"), "worse_label", n=50, num_classes=10)
            == d["worse_label"]).all()


def test_noisy_dataset_triples_and_augment():
    b = D.load_digits()
    ds = D.NoisyDataset(b.x_train, b.y_train)
    x, y, i = ds[5]
    assert x.shape == (1, 8, 8) and int(y) == b.y_train[5] and i == 5
    g = torch.Generator().manual_seed(0)
    xa = augment(b.x_train[:16], g, pad=1, flip=False)
    assert xa.shape == (16, 1, 8, 8)
    # a translation moves pixels but keeps the image's content otherwise
    assert not torch.equal(xa, b.x_train[:16])


def test_unknown_method_and_noise_errors(capsys):
    with pytest.raises(ValueError, match="unknown method 'mixup'"):
        settings_from(build_parser().parse_args(["--method", "mixup"]))
    with pytest.raises(ValueError, match="unknown noise 'pairflip'"):
        settings_from(build_parser().parse_args(["--noise", "pairflip"]))
    with pytest.raises(ValueError, match="unknown setting"):
        settings_from(build_parser().parse_args(["--set", "lamda_u=3"]))
    assert main(["--compare", "ce,foo", "--no-progress"]) == 2
    assert "unknown method 'foo'" in capsys.readouterr().err


def test_config_file_toml_and_json(tmp_path):
    (tmp_path / "c.toml").write_text('noise_rate = 0.8\nlambda_u = 3.0\n[methods.dividemix]\n'
                                     'p_threshold = 0.6\n')
    s, _, _ = settings_from(build_parser().parse_args(["--config", str(tmp_path / "c.toml"),
                                                       "--lambda-u", "7"]))
    assert s.noise_rate == 0.8 and s.hp["lambda_u"] == 7 and s.method_hp["dividemix"] == {
        "p_threshold": 0.6}
    (tmp_path / "c.json").write_text('{"noise": "asym", "epochs": 3}')
    s, _, _ = settings_from(build_parser().parse_args(["--config", str(tmp_path / "c.json")]))
    assert s.noise == "asym" and s.hp["epochs"] == 3


def test_defaults_with_no_arguments():
    s, out, _ = settings_from(build_parser().parse_args([]))
    assert (s.dataset, s.noise, s.noise_rate, s.methods, s.seeds) == (
        "digits", "sym", 0.5, ["dividemix-anm"], [0])
    assert out is None  # a fresh folder under ./runs/ is chosen at run time
    assert "--compare" in build_parser().format_help()


def test_boolean_switches_have_a_negative_form():
    """--sync-bn is on by default (presets); --no-sync-bn turns it off, --compile stays opt-in."""
    from anm_fast.train.presets import COMMON

    assert COMMON["sync_bn"] is True
    parse = lambda *a: settings_from(build_parser().parse_args(list(a)))[0].hp  # noqa: E731
    assert "sync_bn" not in parse()  # not given: the preset decides
    assert parse("--no-sync-bn")["sync_bn"] is False
    assert parse("--sync-bn")["sync_bn"] is True
    assert parse("--compile")["compile"] is True
