"""Image folders: parallel decoding, the decoded-array cache, and CIFAR-10-class folders using
the CIFAR-10 noise maps and presets."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from anm_fast.train import data as D
from anm_fast.train import image_cache as C


def write_folder(root, classes, per_class=3, size=8, ext=".jpg"):
    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        for c in classes:
            os.makedirs(root / part / c, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / part / c / f"{i:04d}{ext}")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(C.CACHE_ENV, str(folder))
    return folder


def test_cache_is_written_then_used_and_matches_a_plain_decode(tmp_path, cache):
    write_folder(tmp_path / "d", ["a", "b"], ext=".png")
    b1 = D.load_dataset("imagefolder", str(tmp_path / "d"), image_size=8)
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and all(f.startswith("images-") and f.endswith(".npy") for f in files)
    mtimes = {f: os.stat(cache / f).st_mtime_ns for f in files}
    b2 = D.load_dataset("imagefolder", str(tmp_path / "d"), image_size=8)
    assert {f: os.stat(cache / f).st_mtime_ns for f in files} == mtimes   # read, not rewritten
    assert np.array_equal(b1.x_train.numpy(), b2.x_train.numpy())
    root = str(tmp_path / "d" / "train")
    _, names, _ = D._scan(root)
    plain = np.stack([D._read_image(os.path.join(root, f), 8) for f in names])
    assert np.array_equal(C.load_images(root, names, 8, D._read_image), plain)
    assert np.array_equal(C.decode_all(root, names, 8, D._read_image, workers=4), plain)


def test_changed_file_or_size_misses_the_cache(tmp_path, cache):
    write_folder(tmp_path / "d", ["a", "b"], ext=".png")
    root = str(tmp_path / "d" / "train")
    _, names, _ = D._scan(root)
    key = C.fingerprint(root, names, 8)
    assert C.fingerprint(root, names, 16) != key
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, names[0]))
    os.utime(os.path.join(root, names[0]), ns=(1, 1))
    assert C.fingerprint(root, names, 8) != key
    out = C.load_images(root, names, 8, D._read_image)
    assert (out[0] == 0).all()


def test_damaged_cache_file_is_decoded_again(tmp_path, cache):
    write_folder(tmp_path / "d", ["a", "b"], ext=".png")
    root = str(tmp_path / "d" / "train")
    _, names, _ = D._scan(root)
    good = C.load_images(root, names, 8, D._read_image)
    path = cache / f"images-{C.fingerprint(root, names, 8)}.npy"
    path.write_bytes(b"not an array")
    assert np.array_equal(C.load_images(root, names, 8, D._read_image), good)
    assert np.array_equal(np.load(path), good)


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(C.CACHE_ENV, "off")
    assert C.cache_dir() is None
    write_folder(tmp_path / "d", ["a", "b"], ext=".png")
    D.load_dataset("imagefolder", str(tmp_path / "d"), image_size=8)
    assert not (tmp_path / "cache").exists()


def test_unreadable_image_is_a_clear_error_from_the_pool(tmp_path, cache):
    write_folder(tmp_path / "d", ["a", "b"], per_class=40, ext=".png")
    (tmp_path / "d" / "train" / "b" / "0007.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="0007.png: not a readable image"):
        D.load_dataset("imagefolder", str(tmp_path / "d"), image_size=8)


def test_cifar10_class_folder_uses_cifar10_noise_and_presets(tmp_path, cache, capsys,
                                                            monkeypatch):
    import torch

    from anm_fast.train import loop
    from anm_fast.train.cli import main

    write_folder(tmp_path / "d", list(D.CIFAR10_CLASSES), per_class=4, size=32)
    b = D.load_dataset("imagefolder", str(tmp_path / "d"), train_subset=20)
    assert b.preset == "cifar10"
    assert np.bincount(b.y_train, minlength=10).tolist() == [2] * 10   # spread over classes
    assert D.image_folder_preset(str(tmp_path / "d")) == "cifar10"
    # on a CPU the CIFAR-10 recipe would take days: the CPU preset, with CIFAR-10's noise maps
    assert main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "d"),
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["settings"]["preset"] == "small-images-cpu"
    assert cfg["hyper_parameters"]["dividemix-anm"]["model"] == "small_cnn"
    # on a GPU: the CIFAR-10 preset
    with monkeypatch.context() as m:
        m.setattr(loop, "choose_device", lambda name: torch.device("cuda"))
        assert main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "d"),
                     "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["settings"]["preset"] == "cifar10"
    assert cfg["hyper_parameters"]["dividemix-anm"]["model"] == "preact_resnet18"
    out = tmp_path / "r"
    assert main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "d"), "--noise",
                 "asym", "--noise-rate", "0.5", "--method", "ce", "--epochs", "1", "--width", "4",
                 "--no-progress", "--no-plots", "--out", str(out)]) == 0
    noisy = np.load(out / "noise" / "seed0.npz")["noisy"]
    clean = b.y_train if len(noisy) == 20 else np.repeat(np.arange(10), 4)
    flips = {(int(c), int(n)) for c, n in zip(clean, noisy) if c != n}
    # CIFAR-10's asym map: truck->automobile, bird->airplane, deer->horse, cat<->dog
    assert flips and flips <= {(9, 1), (2, 0), (4, 7), (3, 5), (5, 3)}


def test_other_class_names_keep_the_image_folder_presets(tmp_path, cache):
    write_folder(tmp_path / "d", ["cat", "dog"], ext=".png")
    assert D.load_dataset("imagefolder", str(tmp_path / "d"), image_size=8).preset is None
    assert D.image_folder_preset(str(tmp_path / "d")) is None
