"""Hostile inputs to the trainer's loaders: label files (every format), CIFAR batch folders,
image folders and data-set arguments. Each bad input must give a ValueError / TypeError /
FileNotFoundError that names the file or argument: never another exception, a hang, or a wrong
answer. docs/BAD_INPUTS.md lists every case and its message."""
import io
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anm_fast.train import data as D
from anm_fast.train.label_files import load_label_file

N, C = 12, 10
GOOD = np.arange(N) % C
CLEAR = (ValueError, TypeError, FileNotFoundError)


def write(path, content):
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as f:
        f.write(content)
    return str(path)


def npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def pt_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class Evil:  # a pickled class: weights_only loading must refuse it, never run it
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# (id, file name, content, key, message fragment). Every one must raise ValueError naming the
# file (or FileNotFoundError for a missing one).
LABEL_FILE_CASES = [
    ("empty text", "l.txt", "", None, "0 labels"),
    ("text non-integer", "l.txt", "1\n2\nseven\n", None, "'seven' is not an integer"),
    ("text float token", "l.txt", "\n".join(["1.5"] * N), None, "not an integer"),
    ("text mixed columns", "l.txt", "1\na 2\n", None, "each line must be"),
    ("text three columns", "l.txt", "a b c\n" * N, None, "each line must be"),
    ("text pairs without image folder", "l.txt", "a.png 1\n" * N, None, "image-folder"),
    ("binary garbage as text", "l.txt", bytes(range(256)) * 4, None, "not a readable"),
    ("text too short", "l.txt", "1\n" * (N - 1), None, f"{N - 1} labels"),
    ("text too long", "l.txt", "1\n" * (N + 1), None, f"{N + 1} labels"),
    ("text out of range", "l.txt", "1\n" * (N - 1) + f"{C}\n", None, "outside"),
    ("text negative", "l.txt", "-1\n" + "1\n" * (N - 1), None, "outside"),
    ("npy truncated", "l.npy", npy_bytes(GOOD)[:60], None, "not a readable"),
    ("npy empty file", "l.npy", b"", None, "not a readable"),
    ("npy header only garbage", "l.npy", b"\x93NUMPY\x01\x00garbage", None, "not a readable"),
    ("npy object array", "l.npy", npy_bytes(np.array([1, "a"] * (N // 2), dtype=object)), None,
     "not a readable"),
    ("npy 2-D", "l.npy", npy_bytes(GOOD.reshape(3, 4)), None, "1-D"),
    ("npy scalar", "l.npy", npy_bytes(np.int64(3)), None, "1-D"),
    ("npy NaN", "l.npy", npy_bytes(np.where(GOOD == 3, np.nan, GOOD).astype(float)), None, "NaN"),
    ("npy inf", "l.npy", npy_bytes(np.where(GOOD == 3, np.inf, GOOD).astype(float)), None, "NaN"),
    ("npy fractional", "l.npy", npy_bytes(GOOD + 0.5), None, "integer labels"),
    ("npy huge float", "l.npy", npy_bytes(np.where(GOOD == 3, 1e30, GOOD).astype(float)), None,
     "outside"),
    ("npy uint64 2**63", "l.npy", npy_bytes(np.where(GOOD == 3, 2**63, GOOD).astype(np.uint64)),
     None, "outside"),
    ("npy bool", "l.npy", npy_bytes(GOOD > 4), None, "integer labels"),
    ("npy strings", "l.npy", npy_bytes(GOOD.astype(str)), None, "integer labels"),
    ("npy complex", "l.npy", npy_bytes(GOOD.astype(complex)), None, "integer labels"),
    ("npy wrong length", "l.npy", npy_bytes(GOOD[:-1]), None, f"{N - 1} labels"),
    ("npy empty array", "l.npy", npy_bytes(np.zeros(0, np.int64)), None, "0 labels"),
    ("npy out of range", "l.npy", npy_bytes(GOOD + 1), None, "outside"),
    ("npz truncated", "l.npz", npz_bytes(a=GOOD)[:50], None, "not a readable"),
    ("npz not a zip", "l.npz", b"hello world", None, "not a readable"),
    ("npz several keys", "l.npz", npz_bytes(a=GOOD, b=GOOD), None, "several label lists"),
    ("npz unknown key", "l.npz", npz_bytes(a=GOOD), "worse_label", "no label list"),
    ("json invalid", "l.json", "[1, 2,", None, "not a readable"),
    ("json ragged", "l.json", json.dumps([[1], [1, 2]] * (N // 2)), None, "1-D"),
    ("json strings", "l.json", json.dumps(["1"] * N), None, "integer labels"),
    ("json booleans", "l.json", json.dumps([True] * N), None, "integer labels"),
    ("json nulls", "l.json", json.dumps([None] * N), None, "integer labels"),
    ("json object of scalars", "l.json", json.dumps({"a": 1}), None, "image-folder"),  # {path: label}
    ("json dict unknown key", "l.json", json.dumps({"a": GOOD.tolist()}), "b", "no label list"),
    ("json NaN", "l.json", "[" + ", ".join(["NaN"] * N) + "]", None, "NaN"),
    ("json wrong length", "l.json", json.dumps(GOOD.tolist()[:-2]), None, f"{N - 2} labels"),
    ("pt truncated", "l.pt", pt_bytes({"worse_label": GOOD})[:100], "worse_label",
     "could not read"),
    ("pt random bytes", "l.pt", os.urandom(300), None, "could not read"),
    ("pt pickled code", "l.pt", pickle.dumps(Evil()), None, "could not read"),
    ("pt float tensor fractional", "l.pt", pt_bytes({"l": torch.rand(N)}), "l", "integer labels"),
    ("pt 2-D tensor", "l.pt", pt_bytes({"l": torch.zeros(N, 2, dtype=torch.long)}), "l", "1-D"),
    ("pt wrong length", "l.pt", pt_bytes({"l": torch.zeros(N + 3, dtype=torch.long)}), "l",
     f"{N + 3} labels"),
    ("pt out of range", "l.pt", pt_bytes({"l": torch.full((N,), 99)}), "l", "outside"),
]


@pytest.mark.parametrize("case", LABEL_FILE_CASES, ids=[c[0] for c in LABEL_FILE_CASES])
def test_bad_label_file_is_a_clear_error(tmp_path, case):
    _, name, content, key, fragment = case
    path = write(tmp_path / name, content)
    with pytest.raises(ValueError) as info:
        load_label_file(path, key, n=N, num_classes=C)
    msg = str(info.value)
    assert path in msg, msg  # names the file
    assert fragment in msg, msg


def test_missing_and_folder_label_paths(tmp_path):
    for p in (str(tmp_path / "nope.npy"), str(tmp_path), "", None):
        with pytest.raises(FileNotFoundError, match="noisy label file not found"):
            load_label_file(p, None, n=N, num_classes=C)


def test_special_files_say_what_they_are(tmp_path):
    """A FIFO would block a reader forever and /dev/zero never ends: refused before reading."""
    fifo = tmp_path / "l.txt"
    os.mkfifo(fifo)
    zero = tmp_path / "l.npy"
    zero.symlink_to("/dev/zero")
    for path, kind in ((fifo, "a FIFO (named pipe)"), (zero, "a character device")):
        with pytest.raises(ValueError, match=re.escape(f"{path}: {kind}, not a label file")):
            load_label_file(str(path), None, n=N, num_classes=C)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_label_file(str(tmp_path), None, n=N, num_classes=C)


def test_good_files_in_every_format_give_the_same_labels(tmp_path):
    files = [write(tmp_path / "a.txt", "\n".join(map(str, GOOD))),
             write(tmp_path / "a.npy", npy_bytes(GOOD)),
             write(tmp_path / "a.npz", npz_bytes(k=GOOD)),
             write(tmp_path / "a.json", json.dumps(GOOD.tolist())),
             write(tmp_path / "a.pt", pt_bytes({"k": torch.as_tensor(GOOD)})),
             write(tmp_path / "b.npy", npy_bytes(GOOD.astype(np.float32)))]  # integral floats
    for f in files:
        out = load_label_file(f, "k" if f.endswith((".npz", ".pt")) else None, n=N,
                                num_classes=C)
        assert out.dtype == np.int64 and np.array_equal(out, GOOD), f


def _outcome(path, key=None):
    """The loader's answer: a checked label array, or a clear error naming the file."""
    try:
        out = load_label_file(path, key, n=N, num_classes=C)
    except ValueError as e:
        assert path in str(e), str(e)
        return None
    assert out.dtype == np.int64 and out.shape == (N,)
    assert ((out >= 0) & (out < C)).all()
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), ext=st.sampled_from([".txt", ".npy", ".npz", ".json", ".pt"]))
def test_fuzz_random_bytes_never_crash(tmp_path, data, ext):
    _outcome(write(tmp_path / f"f{ext}", data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid=st.lists(st.integers(0, C - 1), min_size=N, max_size=N), cut=st.integers(0, 2000),
       ext=st.sampled_from([".npy", ".npz", ".json", ".pt", ".txt"]))
def test_fuzz_truncated_valid_files(tmp_path, valid, cut, ext):
    arr = np.asarray(valid, dtype=np.int64)
    content = {".npy": lambda: npy_bytes(arr), ".npz": lambda: npz_bytes(k=arr),
               ".json": lambda: json.dumps(valid).encode(),
               ".pt": lambda: pt_bytes({"k": torch.as_tensor(arr)}),
               ".txt": lambda: "\n".join(map(str, valid)).encode()}[ext]()
    out = _outcome(write(tmp_path / f"f{ext}", content[:cut]), "k" if ext in (".npz", ".pt")
                   else None)
    if out is not None:  # only a whole file (or a text/JSON cut that still parses) may load ...
        assert cut >= len(content) or ext in (".txt",), (ext, cut, len(content))
        if cut >= len(content):
            assert np.array_equal(out, arr)  # ... and then it must be the right answer


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True,
                                                                          allow_infinity=True)),
                       min_size=0, max_size=N + 2),
       dtype=st.sampled_from(["int64", "int32", "uint8", "float32", "float64", "int16"]))
def test_fuzz_label_arrays(tmp_path, values, dtype):
    with np.errstate(all="ignore"):
        try:
            arr = np.asarray(values, dtype=np.float64).astype(dtype)
        except (OverflowError, ValueError):
            return
    out = _outcome(write(tmp_path / "f.npy", npy_bytes(arr)))
    if out is not None:  # accepted only when it is exactly a valid label list
        assert len(arr) == N and np.array_equal(out, arr.astype(np.float64))


# --------------------------------------------------------------------------------- CIFAR folders
def cifar_folder(root, train=None, test=None, meta=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    good = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}
    for i in range(1, 6):
        content = train if (train is not None and i == 3) else good
        with open(folder / f"data_batch_{i}", "wb") as f:
            f.write(content if isinstance(content, bytes) else pickle.dumps(content))
    with open(folder / "test_batch", "wb") as f:
        t = test if test is not None else good
        f.write(t if isinstance(t, bytes) else pickle.dumps(t))
    if meta is not None:
        with open(folder / "batches.meta", "wb") as f:
            f.write(meta)
    return str(root)


CIFAR_CASES = [
    ("truncated batch", dict(train=pickle.dumps({"data": np.zeros((4, 3072), np.uint8),
                                                 "labels": [0] * 4})[:80]), "data_batch_3"),
    ("random bytes batch", dict(train=os.urandom(200)), "data_batch_3"),
    ("empty batch file", dict(train=b""), "data_batch_3"),
    ("not a dict", dict(train=[1, 2, 3]), "holds a dict"),
    ("missing data", dict(train={"labels": [0]}), "no 'data'"),
    ("missing labels", dict(train={"data": np.zeros((1, 3072), np.uint8)}), "no 'labels'"),
    ("float pixels", dict(train={"data": np.random.rand(4, 3072), "labels": [0] * 4}),
     "8-bit pixel"),
    ("pixels above 255", dict(train={"data": np.full((4, 3072), 300), "labels": [0] * 4}),
     "8-bit pixel"),
    ("wrong image size", dict(train={"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}),
     "(n, 3072)"),
    ("fewer labels than images", dict(train={"data": np.zeros((4, 3072), np.uint8),
                                             "labels": [0] * 3}), "4 images but 3 labels"),
    ("string labels", dict(train={"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}),
     "1-D list of integers"),
    ("label out of range", dict(train={"data": np.zeros((2, 3072), np.uint8),
                                       "labels": [0, 10]}), "outside [0, 10)"),
    ("empty test set", dict(test={"data": np.zeros((0, 3072), np.uint8), "labels": []}),
     "no images"),
    ("corrupt meta", dict(meta=b"\x80\x04garbage"), "batches.meta"),
]


@pytest.mark.parametrize("case", CIFAR_CASES, ids=[c[0] for c in CIFAR_CASES])
def test_bad_cifar_folder_is_a_clear_error(tmp_path, case):
    _, kw, fragment = case
    root = cifar_folder(tmp_path, **kw)
    with pytest.raises(ValueError) as info:
        D.load_dataset("cifar10", root)
    assert fragment in str(info.value), str(info.value)


# ---------------------------------------------------------------------------- image folder, args
def image_folder(root, bad=None):
    from PIL import Image

    for part in ("train", "test"):
        for c in ("cat", "dog"):
            d = root / part / c
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(d / "a.png")
    if bad is not None:
        with open(root / "train" / "dog" / "broken.png", "wb") as f:
            f.write(bad)
    return str(root)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, os.urandom(64)],
                         ids=["empty", "truncated png", "random bytes"])
def test_unreadable_image_is_a_clear_error(tmp_path, content):
    root = image_folder(tmp_path, bad=content)
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        D.load_dataset("imagefolder", root, image_size=8)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "32"])
def test_bad_image_size(tmp_path, size):
    root = image_folder(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        D.load_dataset("imagefolder", root, image_size=size)


@pytest.mark.parametrize("subset", [0, -5, 2.5, True, "10"])
def test_bad_train_subset(subset):
    with pytest.raises(ValueError, match="train_subset"):
        D.load_dataset("digits", train_subset=subset)


@pytest.mark.parametrize("name", ["mnist", "", "CIFAR10", None])
def test_unknown_dataset_name(name):
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset(name)
