"""--recipe sanm-release / sanm-release-clothing1m, --print-config, and pre-trained weight files."""
import json

import pytest
import torch

from anm_fast.train.cli import main
from anm_fast.train.pretrained import canonical_name, load_pretrained


def print_config(capsys, *args):
    assert main(list(args) + ["--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("noise,rate", [("sym", 0.2), ("sym", 0.5), ("sym", 0.8), ("sym", 0.9),
                                        ("asym", 0.4)])
def test_sanm_release_print_config_is_the_release(capsys, noise, rate):
    cfg = print_config(capsys, "--recipe", "sanm-release", "--dataset", "cifar10", "--noise",
                       noise, "--noise-rate", str(rate))
    hp = cfg["hyper_parameters"]["dividemix-anm"]
    assert cfg["settings"]["recipe"] == "sanm-release"
    expected = dict(epochs=361, lambda_u=25.0, p_threshold=0.5, alpha=4.0, T=0.5,
                    recon_weight=0.02, lr=0.02, batch_size=64, warmup=10, lr_step=150,
                    model="resnet18", softmax_in_net=True, views="sanm", warmup_views="sanm",
                    warmup_clip=1.0, decoder="sanm")
    assert {k: hp[k] for k in expected} == expected
    assert hp["conf_penalty"] == (noise == "asym")     # the release's asym warm-up penalty
    assert hp["loss_history"] == (rate >= 0.9)          # the release's 5-epoch loss average
    anm = cfg["anm_config"]["dividemix-anm"]
    assert anm["anchor"] == "corner" and anm["band"] == pytest.approx(1 / 255)


def test_recipe_values_lie_under_flags_and_cifar100_warmup(capsys):
    cfg = print_config(capsys, "--recipe", "sanm-release", "--dataset", "cifar100",
                       "--lambda-u", "150", "--epochs", "5")
    hp = cfg["hyper_parameters"]["dividemix-anm"]
    assert (hp["warmup"], hp["lambda_u"], hp["epochs"]) == (20, 150.0, 5)


def test_default_config_is_not_the_recipe(capsys):
    cfg = print_config(capsys, "--dataset", "cifar10", "--noise-rate", "0.5")
    hp = cfg["hyper_parameters"]["dividemix-anm"]
    assert (hp["softmax_in_net"], hp["views"], hp["decoder"], hp["epochs"]) == (
        False, "standard", "auto", 300)
    assert cfg["anm_config"]["dividemix-anm"]["anchor"] == "center"


def test_clothing1m_recipe_keeps_the_release_numbers_not_its_defects(capsys, tmp_path):
    from PIL import Image

    (tmp_path / "train" / "shirt").mkdir(parents=True)  # the preset is chosen from the images
    Image.new("RGB", (64, 64)).save(tmp_path / "train" / "shirt" / "0.png")
    cfg = print_config(capsys, "--recipe", "sanm-release-clothing1m", "--dataset",
                       "imagefolder", "--data-dir", str(tmp_path))
    hp = cfg["hyper_parameters"]["dividemix-anm"]
    assert (hp["alpha"], hp["weight_decay"], hp["conf_penalty"], hp["image_size"],
            hp["recon_weight"], hp["lambda_u"]) == (0.5, 1e-3, True, 224, 0.3, 0.0)
    anm = cfg["anm_config"]["dividemix-anm"]
    # the quality term is a fraction of the area and the box sits at the peak (centred)
    assert anm["quality_gain"] == 0.1 and anm["anchor"] == "center"
    assert (anm["area_lo"], anm["area_hi"]) == (0.06, 0.13)


def test_recipe_on_the_wrong_data_set_is_refused(capsys):
    assert main(["--recipe", "sanm-release", "--dataset", "digits", "--print-config"]) == 2
    assert "CIFAR-10/100" in capsys.readouterr().err
    assert main(["--recipe", "nope", "--print-config"]) == 2
    assert "unknown recipe" in capsys.readouterr().err


def _c2d_style_checkpoint(path, num_classes=10):
    """A checkpoint laid out like the C2D files the release loads: {"model": ...}, DataParallel
    and encoder prefixes, "shortcut" for torchvision's "downsample", a projection head."""
    from anm_fast.models import build_model

    torch.manual_seed(3)
    src = build_model("resnet18", num_classes, cifar_stem=True)
    sd = {}
    for k, v in src.state_dict().items():
        if k.startswith("fc."):
            continue
        sd["module.encoder." + k.replace(".downsample.", ".shortcut.")] = v.clone()
    sd["module.head.0.weight"] = torch.zeros(512, 512)
    torch.save({"model": sd, "epoch": 100}, path)
    return src


def test_pretrained_c2d_layout_loads_and_counts(tmp_path):
    from anm_fast.models import build_model

    src = _c2d_style_checkpoint(tmp_path / "c2d.pth")
    net = build_model("resnet18", 10, cifar_stem=True)
    loaded, total = load_pretrained(net, str(tmp_path / "c2d.pth"))
    assert total == len(net.state_dict()) and loaded == total - 2   # all but fc.weight/bias
    assert torch.equal(net.layer2[0].downsample[0].weight, src.layer2[0].downsample[0].weight)
    assert canonical_name("module.encoder.layer1.0.shortcut.1.bias") == \
        "layer1.0.downsample.1.bias"


def test_pretrained_file_matching_nothing_is_refused(tmp_path):
    from anm_fast.models import build_model

    torch.save({"model": {"totally.other": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="none of its 1 tensors matches"):
        load_pretrained(build_model("resnet18", 10, cifar_stem=True), str(tmp_path / "other.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_pretrained(build_model("small_cnn", 10), str(tmp_path / "list.pth"))
    with pytest.raises(FileNotFoundError):
        load_pretrained(build_model("small_cnn", 10), str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("pretrained", [False, True])
def test_sanm_release_trains_on_a_cifar_fixture(tmp_path, capsys, pretrained):
    from test_train_data import write_cifar10

    write_cifar10(tmp_path / "data", n_train=40, n_test=10)
    args = ["--recipe", "sanm-release", "--dataset", "cifar10", "--data-dir",
            str(tmp_path / "data"), "--epochs", "2", "--warmup", "1", "--batch-size", "8",
            "--no-progress", "--no-plots", "--threads", "1", "--out", str(tmp_path / "r")]
    if pretrained:
        _c2d_style_checkpoint(tmp_path / "c2d.pth")
        args += ["--pretrained", str(tmp_path / "c2d.pth")]
    assert main(args) == 0  # one warm-up epoch, then one six-group DivideMix + ANM epoch
    captured = capsys.readouterr()
    assert ("loaded 120 of the model's 122 tensors" in captured.err) == pretrained
    rows = [json.loads(l) for l in open(tmp_path / "r" / "dividemix-anm" / "seed0" /
                                        "metrics.jsonl")]
    assert len(rows) == 2 and "Lx1" in rows[1] and rows[1]["recon1"] > 0
    run_hp = json.load(open(tmp_path / "r" / "run_config.json"))["hp"]
    assert run_hp["views"] == "sanm" and run_hp["epochs"] == 2


def test_eval_every_tests_only_some_epochs_and_the_last(tmp_path):
    out = tmp_path / "r"
    assert main(["--method", "ce", "--epochs", "3", "--eval-every", "2", "--train-subset", "100",
                 "--no-progress", "--no-plots", "--threads", "1", "--out", str(out)]) == 0
    rows = [json.loads(l) for l in open(out / "ce" / "seed0" / "metrics.jsonl")]
    assert [r["test_acc"] is None for r in rows] == [True, False, False]
    res = json.load(open(out / "results.json"))["results"]["ce"]["0"]
    assert res["epochs"] == 3 and res["last"] == rows[2]["test_acc"]
    # a finished run is recognised as finished (same epochs) and not trained again
    assert main(["--resume", str(out), "--no-progress", "--no-plots"]) == 0
