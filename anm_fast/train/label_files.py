"""Label lists a user writes or downloads: `--noise-file` of `anm-train`.

Forms, chosen by the file's extension:
- `.pt` / `.pth`: a CIFAR-N file (a dict of label arrays; pick one with `--noise human:KEY`),
  or a tensor/array. Read with torch.load(weights_only=True) unless --trust-noise-file.
- `.npy`, `.npz` (pick a key like .pt): one integer label per training image, training order.
- `.json`: a list of labels in training order, a dict of such lists (pick a key), or a dict
  `{image path: label}` for image folders.
- `.csv`: a header row naming a path column (path, file, filename or image) and a label column
  (label, class, noisy_label, target or y); or rows `path,label` / `label` without a header.
- anything else (`.txt`, ...): one label per line in training order, or `<path> <label>` lines
  (Clothing1M style); blank lines and `#` comments are skipped.

Paths name training images relative to `train/` (`dog/1.png`) or to the data folder
(`train/dog/1.png`). Labels are class indices or, for data with class names (image folders), the
class names themselves; a token that is a class name means that class even if it looks like a
number (a folder named "10" sorts before "2").
"""
from __future__ import annotations

import csv
import json
import os
import stat
import warnings
import zipfile
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["load_label_file"]

PATH_COLUMNS = ("path", "file", "filename", "image")
LABEL_COLUMNS = ("label", "class", "noisy_label", "target", "y")


def _file_kind(path: str) -> str:
    mode = os.stat(path).st_mode
    for test, kind in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def load_label_file(path: str, key: Optional[str], *, n: int, num_classes: int,
                    train_files: Optional[Sequence[str]] = None,
                    class_names: Optional[Sequence[str]] = None, trust: bool = False) -> np.ndarray:
    """The (n,) int64 labels of a label list in one of the forms above, checked: length n, every
    label in [0, num_classes). train_files: the training images' paths relative to train/ (image
    folders; needed for lists keyed by path). class_names: accept names as labels."""
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"noisy label file not found: {path!r}")
    if os.path.isdir(path):
        raise FileNotFoundError(f"noisy label file not found: {path!r} is a folder")
    if not os.path.isfile(path):
        # reading a FIFO would wait forever, a device like /dev/zero never ends
        raise ValueError(f"{path}: a {_file_kind(path)}, not a label file (expected a regular "
                         f"file)")
    parser = _Labels(path, num_classes, class_names)
    try:
        labels = _read(path, key, train_files, trust, parser)
    except (OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile, json.JSONDecodeError,
            csv.Error, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise  # already names the file
        raise ValueError(f"{path}: not a readable label file ({type(e).__name__}: {e})") from e
    return _check_labels(labels, path, n, num_classes)


class _Labels:
    """Turns one label token (int or str) into a class index, naming the file on failure."""

    def __init__(self, path: str, num_classes: int, class_names: Optional[Sequence[str]]):
        self.path = path
        self.names = {str(c): i for i, c in enumerate(class_names or [])}

    def __call__(self, token) -> int:
        if isinstance(token, str):
            token = token.strip()
            if token in self.names:
                return self.names[token]
        if isinstance(token, bool) or not isinstance(token, (int, str)):
            raise ValueError(f"{self.path}: {token!r} is not an integer label")
        try:
            return int(token)
        except ValueError:
            names = (f" nor a class name ({', '.join(list(self.names)[:10])}"
                     f"{', ...' if len(self.names) > 10 else ''})") if self.names else ""
            raise ValueError(f"{self.path}: {token!r} is not an integer label{names}") from None

    def strings(self, values) -> list:
        """A JSON list of class names -> indices; anything else is left for _check_labels."""
        if self.names and values and all(isinstance(v, str) for v in values):
            return [self(v) for v in values]
        return values


def _read(path, key, train_files, trust, parse: _Labels):
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth"):
        return _pick(_torch_load_labels(path, trust), key, path)
    if ext == ".npy":
        return np.load(path, allow_pickle=False)
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(_pick(f, key, path))
    if ext == ".json":
        with open(path) as f:
            obj = json.load(f)
        if isinstance(obj, dict) and obj and all(isinstance(v, (int, str)) and
                                                 not isinstance(v, bool) for v in obj.values()):
            return _by_path(path, {p: parse(v) for p, v in obj.items()}, train_files,
                            "a JSON {image path: label} dict")
        return parse.strings(_pick(obj, key, path))
    if ext == ".csv":
        return _read_csv(path, train_files, parse)
    with open(path) as f:
        rows = [ln.split() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if rows and all(len(r) == 2 for r in rows):
        return _by_path(path, {p: parse(l) for p, l in rows}, train_files, "'<path> <label>' lines")
    if all(len(r) == 1 for r in rows):
        return [parse(r[0]) for r in rows]
    raise ValueError(f"{path}: each line must be '<label>' or '<path> <label>' (a path without "
                     f"spaces)")


def _read_csv(path, train_files, parse: _Labels):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    path_col = next((head.index(c) for c in PATH_COLUMNS if c in head), None)
    label_col = next((head.index(c) for c in LABEL_COLUMNS if c in head), None)
    if label_col is not None:
        rows = rows[1:]
    elif any(c in head for c in PATH_COLUMNS) or len(head) > 2:
        raise ValueError(f"{path}: a CSV header must name a label column (one of "
                         f"{', '.join(LABEL_COLUMNS)}), got {rows[0]}")
    elif len(head) == 2:
        path_col, label_col = 0, 1
    else:
        label_col = 0
    width = len(head)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(f"{path}: row {i + 2 if label_col is not None else i + 1} has "
                             f"{len(r)} fields, the first row {width}")
    if path_col is None:
        return [parse(r[label_col]) for r in rows]
    return _by_path(path, {r[path_col].strip(): parse(r[label_col]) for r in rows}, train_files,
                    "a CSV with a path column")


def _key(p: str) -> str:
    """A path as written -> relative to train/: 'train/dog/1.png' and './dog/1.png' both give
    'dog/1.png'."""
    p = os.path.normpath(p.replace("\\", "/"))
    parts = p.split(os.sep)
    return os.path.join(*parts[1:]) if len(parts) > 1 and parts[0] == "train" else p


def _by_path(path: str, table: Dict[str, int], train_files, form: str) -> List[int]:
    if train_files is None:
        raise ValueError(f"{path} gives labels by image path ({form}), which only an image-folder "
                         f"data set can match; for other data list one label per line in "
                         f"training order")
    by_key = {_key(p): v for p, v in table.items()}
    missing = [f for f in train_files if _key(f) not in by_key]
    if missing:
        sample = next(iter(table), "")
        raise ValueError(f"{path} has no label for {len(missing)} training images (e.g. "
                         f"{missing[0]!r}, while it names e.g. {sample!r}); paths must be relative "
                         f"to train/ ('{missing[0]}') or to the data folder "
                         f"('train/{missing[0]}')")
    return [by_key[_key(f)] for f in train_files]


def _numpy_safe_globals():
    """The globals a torch.save'd dict of numpy arrays needs under weights_only=True (the
    CIFAR-N files are such dicts; torch >= 2.6 refuses them by default)."""
    out = [np.ndarray, np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["_reconstruct"])
            out.append(m._reconstruct)
            break
        except (ImportError, AttributeError):
            continue
    for t in (np.int64, np.int32, np.int16, np.int8, np.uint8, np.uint16, np.uint32, np.uint64,
              np.float32, np.float64, np.bool_):
        out.append(type(np.dtype(t)))
    return out


def _torch_load_labels(path: str, trust: bool):
    try:
        kwargs = dict(map_location="cpu", weights_only=True)
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                return torch.load(path, **kwargs)
        if hasattr(torch.serialization, "add_safe_globals"):
            torch.serialization.add_safe_globals(_numpy_safe_globals())
        return torch.load(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - unpickling errors have many types
        if not trust:
            raise ValueError(
                f"could not read {path!r} with torch.load(weights_only=True): {e}. If you trust "
                f"the file, pass --trust-noise-file (full unpickling), or convert it to .npy") from e
        warnings.warn(f"loading {path} with full unpickling (--trust-noise-file)")
        return torch.load(path, map_location="cpu", weights_only=False)


def _pick(obj, key: Optional[str], path: str):
    if isinstance(obj, dict) or hasattr(obj, "files"):
        keys = list(obj.files if hasattr(obj, "files") else obj.keys())
        if key is None:
            if len(keys) == 1:
                key = keys[0]
            else:
                raise ValueError(f"{path} holds several label lists {keys}: choose one with "
                                 f"--noise human:KEY")
        if key not in keys:
            raise ValueError(f"{path} has no label list {key!r}; it holds {keys}")
        return obj[key]
    return obj


def _check_labels(labels, path: str, n: int, num_classes: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        labels = np.asarray(labels)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{path}: expected a 1-D list of integer labels ({e})") from None
    if labels.ndim == 1 and labels.size == 0:
        labels = labels.astype(np.int64)  # an empty list reads as float64
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.floating) and \
            not np.isfinite(labels).all():
        raise ValueError(f"{path}: {int((~np.isfinite(labels)).sum())} labels are NaN or "
                         f"infinite")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.floating) and \
                np.all(labels == np.round(labels)):
            # range first: a cast of 1e30 to int64 is undefined, not an error
            _check_range(labels, path, num_classes)
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"{path}: expected a 1-D list of integer labels, got dtype "
                             f"{labels.dtype} and shape {labels.shape}")
    if len(labels) != n:
        raise ValueError(f"{path} has {len(labels)} labels but the training set has {n} images")
    _check_range(labels, path, num_classes)  # before the cast: uint64 2**63 would wrap
    return labels.astype(np.int64)


def _check_range(labels: np.ndarray, path: str, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"{path} has {int(bad.sum())} labels outside [0, {num_classes}) "
                         f"(e.g. {labels[bad][0]} at index {int(np.flatnonzero(bad)[0])})")
