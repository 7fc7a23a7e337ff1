"""Label lists as a user writes them: paths relative to train/ or the data folder, CSV with a
header, JSON {path: label}, class names or indices, and one-line errors naming the form."""
import json

import pytest

from anm_fast.train.label_files import load_label_file

FILES = ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]  # training order (train/ relative)
NAMES = ["cat", "dog"]
WANT = [1, 0, 0, 1]


def load(path, **kw):
    return load_label_file(str(path), None, n=4, num_classes=2, train_files=FILES,
                           class_names=NAMES, **kw).tolist()


@pytest.mark.parametrize("name,text", [
    ("rel_train.txt", "cat/0.png 1\ncat/1.png 0\ndog/0.png 0\ndog/1.png 1\n"),
    ("rel_root.txt", "train/dog/1.png dog\n# comment\ntrain/cat/0.png dog\n\n"
                     "train/dog/0.png cat\ntrain/cat/1.png cat\n"),
    ("header.csv", "path,label\ntrain/cat/0.png,dog\ncat/1.png,0\ndog/0.png,cat\ndog/1.png,1\n"),
    ("cols.csv", "noisy_label,filename,extra\n1,cat/0.png,x\n0,cat/1.png,y\n0,dog/0.png,z\n"
                 "1,dog/1.png,w\n"),
    ("noheader.csv", "cat/0.png,1\ncat/1.png,0\ndog/0.png,0\ndog/1.png,1\n"),
    ("order.csv", "label\ndog\ncat\ncat\ndog\n"),
    ("map.json", json.dumps({"train/cat/0.png": "dog", "cat/1.png": 0, "dog/0.png": "cat",
                             "dog/1.png": 1})),
    ("names.json", json.dumps(["dog", "cat", "cat", "dog"])),
])
def test_every_written_form_gives_the_same_labels(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert load(tmp_path / name) == WANT


def test_numeric_class_names_mean_the_folder(tmp_path):
    # folders "10" and "2" sort as ["10", "2"]: the token "2" is the folder, i.e. index 1
    p = tmp_path / "l.txt"
    p.write_text("2\n10\n2\n10\n")
    assert load_label_file(str(p), None, n=4, num_classes=2,
                           class_names=["10", "2"]).tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize("name,text,fragment", [
    ("missing.txt", "cat/0.png 1\n", "no label for 3 training images (e.g. 'cat/1.png'"),
    ("missing.txt", "cat/0.png 1\n", "relative to train/"),
    ("badname.txt", "cat/0.png 1\ncat/1.png 0\ndog/0.png 0\ndog/1.png bird\n",
     "'bird' is not an integer label nor a class name (cat, dog)"),
    ("nolabel.csv", "path,whatever\ncat/0.png,1\n", "must name a label column"),
    ("ragged.csv", "path,label\ncat/0.png,1,2\n", "row 2 has 3 fields"),
    ("spaces.txt", "my cat.png 1\n", "each line must be '<label>' or '<path> <label>'"),
])
def test_errors_say_which_form_was_expected(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError) as info:
        load(tmp_path / name)
    msg = str(info.value)
    assert fragment in msg and str(tmp_path / name) in msg and "\n" not in msg, msg


def test_paths_need_an_image_folder(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"a.png": 1}))
    with pytest.raises(ValueError, match="only an image-folder data set can match"):
        load_label_file(str(tmp_path / "m.json"), None, n=1, num_classes=2)
