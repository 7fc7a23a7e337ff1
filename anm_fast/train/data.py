"""Data sets held in memory as normalised tensors (label lists: label_files.py; the trainer's
crop and flip: augment.py).

Everything here reads local files only: the digits set ships inside scikit-learn, CIFAR is read
from a folder in torchvision's format and is never downloaded. Training iterates over index
permutations of in-memory tensors (no DataLoader workers): on CPU this is much faster for small
images, and the only random state is the trainer's own generator, which makes exact resume simple.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

from .image_cache import load_images

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
# CIFAR-10's classes in its label order (also their sorted order, so folder indices match)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")


@dataclass
class DataBundle:
    name: str
    x_train: torch.Tensor           # (n, C, H, W) float32, normalised
    y_train: np.ndarray             # (n,) int64 clean labels (-1 where unknown)
    x_test: torch.Tensor
    y_test: np.ndarray
    num_classes: int
    mean: Sequence[float]
    std: Sequence[float]
    pad: int = 0                    # random-translation augmentation (pixels)
    flip: bool = False              # horizontal flips make sense for photos, not for digits
    coarse: Optional[np.ndarray] = None   # CIFAR-100 super-class of each fine class
    class_names: List[str] = field(default_factory=list)
    # the data set whose noise maps and presets apply, when not `name` (an image folder of
    # CIFAR-10's ten classes is "cifar10": asym noise and the CIFAR-10 presets work on it)
    preset: Optional[str] = None
    # an image folder's training files (relative paths, in training order): label lists may name
    # images by path
    train_files: Optional[List[str]] = None

    @property
    def clean_known(self) -> bool:
        return bool((self.y_train >= 0).all())


class NoisyDataset(torch.utils.data.Dataset):
    """(x, y_noisy, index) triples, for users who prefer a DataLoader over the trainer's loop."""

    def __init__(self, x: torch.Tensor, y_noisy: np.ndarray):
        if len(x) != len(y_noisy):
            raise ValueError(f"{len(x)} images but {len(y_noisy)} labels")
        self.x = x
        self.y = torch.as_tensor(np.asarray(y_noisy), dtype=torch.int64)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


# ----------------------------------------------------------------------------------------- digits
def load_digits(test_fraction: float = 0.25) -> DataBundle:
    """scikit-learn's 8x8 digits (1797 images). A fixed stratified split (seed 0) so every seed
    and method is judged on the same 450 test images."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # sklearn is a training extra, not a core dependency
        raise ImportError("the digits data set needs scikit-learn: pip install 'anm_fast[train]'") from e
    d = _load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = np.asarray(d.target, dtype=np.int64)
    rng = np.random.default_rng(0)
    test_idx = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        test_idx.extend(rng.permutation(members)[: int(round(test_fraction * len(members)))])
    test_mask = np.zeros(len(y), bool)
    test_mask[np.asarray(test_idx)] = True
    mean, std = [float(x.mean())], [float(x.std())]
    xn = _normalise(x, mean, std)
    tr, te = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    return DataBundle("digits", xn[tr], y[tr], xn[te], y[te], 10, mean, std, pad=1, flip=False,
                      class_names=[str(i) for i in range(10)])


# ------------------------------------------------------------------------------------------ CIFAR
_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], label="labels", meta="batches.meta",
                    names="label_names", classes=10,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     label="fine_labels", meta="meta", names="fine_label_names", classes=100,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - truncated or foreign files fail in many ways
        raise ValueError(f"{path}: not a readable CIFAR batch file "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR batch file holds a dict, got {type(obj).__name__}")
    return obj


def _cifar_batch(path: str, label_key: str):
    """(images uint8 (n, 3, 32, 32), labels, coarse labels or None) of one batch file, checked:
    a wrong-sized, non-integer or mislabelled file is an error, never silently cast."""
    d = _unpickle(path)
    for k in ("data", label_key):
        if k not in d:
            raise ValueError(f"{path}: no {k!r} entry (it holds {sorted(map(str, d))})")
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key])
    except ValueError as e:
        raise ValueError(f"{path}: 'data' or {label_key!r} is not an array ({e})") from e
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or data.size and (
                data.min() < 0 or data.max() > 255):
            raise ValueError(f"{path}: 'data' must hold 8-bit pixel values, got dtype "
                             f"{data.dtype}")
    if data.ndim not in (2, 4) or data.size % (3 * 32 * 32) or (
            data.ndim == 2 and data.shape[1] != 3 * 32 * 32):
        raise ValueError(f"{path}: 'data' must be (n, 3072) or (n, 3, 32, 32), got shape "
                         f"{data.shape}")
    if labels.ndim == 1 and labels.size == 0:
        labels = labels.astype(np.int64)  # an empty list reads as float64
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must be a 1-D list of integers, got dtype "
                         f"{labels.dtype} and shape {labels.shape}")
    data = data.astype(np.uint8).reshape(-1, 3, 32, 32)
    if len(data) != len(labels):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    coarse = None
    if "coarse_labels" in d:
        coarse = np.asarray(d["coarse_labels"])
        if coarse.shape != labels.shape or not np.issubdtype(coarse.dtype, np.integer):
            raise ValueError(f"{path}: 'coarse_labels' must match {label_key!r} in length")
        coarse = coarse.astype(np.int64)
    return data, labels.astype(np.int64), coarse


def _cifar_root(name: str, data_dir: Optional[str]) -> str:
    spec = _CIFAR[name]
    if not data_dir:
        raise FileNotFoundError(
            f"--dataset {name} needs --data-dir: a folder holding torchvision's "
            f"'{spec['folder']}' (nothing is downloaded)")
    for root in (os.path.join(data_dir, spec["folder"]), data_dir):
        if all(os.path.isfile(os.path.join(root, f)) for f in spec["train"] + spec["test"]):
            return root
    raise FileNotFoundError(
        f"no {name} data in {data_dir!r}: expected torchvision's format, "
        f"{os.path.join(data_dir, spec['folder'])}/{{{','.join(spec['train'] + spec['test'])}}} "
        f"(download it yourself, e.g. torchvision.datasets.{name.upper().replace('CIFAR', 'CIFAR')}"
        f"(root, download=True); the trainer never downloads)")


def load_cifar(name: str, data_dir: Optional[str]) -> DataBundle:
    """CIFAR-10/100 from the pickled batches torchvision writes (read directly: torchvision's own
    class insists on checksums, which would reject subsets and test fixtures)."""
    spec = _CIFAR[name]
    root = _cifar_root(name, data_dir)

    def read(files):
        xs, ys, coarse = [], [], []
        for f in files:
            x, y, c = _cifar_batch(os.path.join(root, f), spec["label"])
            xs.append(x)
            ys.append(y)
            if c is not None:
                coarse.append(c)
        return np.concatenate(xs), np.concatenate(ys), (np.concatenate(coarse) if coarse else None)

    xtr, ytr, ctr = read(spec["train"])
    xte, yte, _ = read(spec["test"])
    for part, y in (("train", ytr), ("test", yte)):
        if len(y) == 0:
            raise ValueError(f"{name} {part} files in {root!r} hold no images")
        if y.min() < 0 or y.max() >= spec["classes"]:
            raise ValueError(f"{name} {part} labels in {root!r} outside [0, {spec['classes']})")
    if ctr is not None and len(ctr) != len(ytr):
        raise ValueError(f"{name} in {root!r}: coarse labels in some training files only")
    names = []
    meta_path = os.path.join(root, spec["meta"])
    if os.path.isfile(meta_path):
        names = [str(v) for v in _unpickle(meta_path).get(spec["names"], [])]
    coarse_map = None
    if ctr is not None:  # super-class of each fine class, from the data itself
        coarse_map = np.full(spec["classes"], -1, np.int64)
        coarse_map[ytr] = ctr
        if (coarse_map < 0).any():
            coarse_map = None  # a subset lacking some classes: fall back to the standard table

    def tens(a):
        return _normalise(torch.from_numpy(a).float() / 255.0, spec["mean"], spec["std"])

    return DataBundle(name, tens(xtr), ytr, tens(xte), yte, spec["classes"], spec["mean"],
                      spec["std"], pad=4, flip=True, coarse=coarse_map, class_names=names)


# ------------------------------------------------------------------------------------ image folder
def _scan(folder: str):
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    files, labels = [], []
    for ci, c in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(os.path.join(folder, c))):
            for n in sorted(names):
                if n.lower().endswith(IMAGE_EXTS):
                    files.append(os.path.relpath(os.path.join(dirpath, n), folder))
                    labels.append(ci)
    return classes, files, np.asarray(labels, dtype=np.int64)


def _read_image(path: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def image_folder_preset(data_dir: Optional[str]) -> Optional[str]:
    """"cifar10" when data_dir/train holds exactly CIFAR-10's class folders (their noise maps
    and presets then apply), else None."""
    folder = os.path.join(data_dir or "", "train")
    if not os.path.isdir(folder):
        return None
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    return "cifar10" if classes == list(CIFAR10_CLASSES) else None


def probe_image_folder(data_dir: Optional[str]):
    """(number of training images, (height, width) of the first one) without reading the images:
    what choosing a preset needs. Errors as load_image_folder's."""
    from PIL import Image

    train = _image_folder_part(data_dir, "train")
    _, files, _ = _scan(train)
    if not files:
        raise FileNotFoundError(f"no images in {train}")
    path = os.path.join(train, files[0])
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return len(files), (h, w)


def _image_folder_part(data_dir: Optional[str], part: str) -> str:
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--dataset imagefolder needs --data-dir pointing to an existing "
                                f"folder with train/ and test/ sub-folders, got {data_dir!r}")
    folder = os.path.join(data_dir, part)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {data_dir!r} has no '{part}/' sub-folder "
                                f"(expected {part}/<class name>/<image files>)")
    return folder


def load_image_folder(data_dir: Optional[str], image_size: int = 32) -> DataBundle:
    """`data_dir/train/<class>/*.png` and `data_dir/test/<class>/*.png` (torchvision ImageFolder
    layout), resized to image_size and held in memory. The folder name is the clean label of a
    training image; real noisy labels come from a label list (--noise human --noise-file)."""
    from PIL import Image

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    parts = {part: _scan(_image_folder_part(data_dir, part)) for part in ("train", "test")}
    classes = parts["train"][0]
    if len(classes) < 2:
        raise ValueError(f"{data_dir}/train needs at least 2 class folders, found {classes}")
    if parts["test"][0] != classes:
        raise ValueError(f"train/ and test/ of {data_dir!r} hold different class folders")

    def read(part):
        _, files, labels = parts[part]
        if not files:
            raise FileNotFoundError(f"no images in {os.path.join(data_dir, part)}")
        arr = load_images(os.path.join(data_dir, part), files, image_size, _read_image)
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0, labels, files

    xtr, ytr, files = read("train")
    xte, yte, _ = read("test")
    mean = [float(v) for v in xtr.mean(dim=(0, 2, 3))]
    std = [max(float(v), 1e-3) for v in xtr.std(dim=(0, 2, 3))]
    bundle = DataBundle("imagefolder", _normalise(xtr, mean, std), ytr, _normalise(xte, mean, std),
                        yte, len(classes), mean, std, pad=max(1, image_size // 8), flip=True,
                        class_names=classes,
                        preset="cifar10" if classes == list(CIFAR10_CLASSES) else None,
                        train_files=files)
    return bundle


def load_dataset(name: str, data_dir: Optional[str] = None, *, image_size: int = 32,
                 train_subset: Optional[int] = None) -> DataBundle:
    if name == "digits":
        bundle = load_digits()
    elif name in _CIFAR:
        bundle = load_cifar(name, data_dir)
    elif name == "imagefolder":
        bundle = load_image_folder(data_dir, image_size)
    else:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if train_subset is not None and (isinstance(train_subset, bool) or
                                     not isinstance(train_subset, (int, np.integer)) or
                                     train_subset < 1):
        raise ValueError(f"train_subset must be a positive integer (or unset), got "
                         f"{train_subset!r}")
    if train_subset:  # quick experiments and tests: the first n training images
        keep = slice(0, train_subset)
        if name == "imagefolder" and train_subset < len(bundle.y_train):
            # an image folder is read class by class: n images spread evenly over the sorted
            # list instead, so a subset holds every class (in proportion)
            keep = np.linspace(0, len(bundle.y_train) - 1, train_subset).round().astype(np.int64)
        bundle.x_train = bundle.x_train[keep]
        bundle.y_train = bundle.y_train[keep]
        if bundle.train_files is not None:
            bundle.train_files = [bundle.train_files[i] for i in np.arange(
                len(bundle.train_files))[keep]]
    return bundle
