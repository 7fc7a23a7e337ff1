"""`anm-train`: command-line flags and config files -> Settings -> loop.run -> printed summary.

Precedence, lowest first: general defaults, the data set's preset, the per-noise method preset,
the --config file, then flags. A config file (JSON or TOML) may set any flag by its long name
(dashes or underscores) and any hyper-parameter, and hold per-method tables, e.g.
    {"noise_rate": 0.8, "lambda_u": 25, "methods": {"dividemix": {"p_threshold": 0.6}}}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

from . import distributed as dist
from . import preempt
from .checkpoint import CheckpointError
from .loop import Settings, free_folder, run
from .methods import METHODS
from .noise import parse_noise
from .presets import COMMON, anm_config
from .recipes import RECIPES, recipe_hp
from .reporting import table

DEFAULT_METHOD = "dividemix-anm"

# flag -> hyper-parameter name (type)
HP_FLAGS = {
    "model": str, "width": int, "lr": float, "momentum": float, "weight_decay": float, "schedule": str,
    "lr_step": int, "warmup": int, "alpha": float, "T": float, "lambda_u": float, "rampup": int,
    "p_threshold": float, "recon_weight": float, "anm_preset": str, "anm_area_lo": float,
    "anm_area_hi": float, "anm_area_scale": float, "anm_quality_gain": float,
    "anm_label_gain": float, "eval_every": int, "image_size": int, "train_subset": int, "pretrained": str, "threads": int,
}
# boolean hyper-parameter flags (--name / --no-name)
HP_SWITCHES = {"compile": "torch.compile the networks (GPU)",
               "sync_bn": "under torchrun: BatchNorm batch statistics over the global batch "
                          "(SyncBatchNorm on GPUs, GlobalBatchNorm on CPU) [default: on]; "
                          "--no-sync-bn: per-process statistics",
               # ANM ablations: --no-anm-max-copy etc. switch one part of ANM off
               "anm_max_copy": "ANM: train on the max-erased copies [default: on]",
               "anm_min_copy": "ANM: train on the min-erased copies [default: on]",
               "anm_soften": "ANM: soften the erased copies' targets (off: their targets are the "
                             "clean images' targets) [default: on]",
               "anm_recon": "ANM: the reconstruction decoder and loss [default: on]",
               "softmax_in_net": "the released SANM network: softmax inside the network, then "
                                 "softmax / log-softmax / CE on those probabilities "
                                 "[default: off; on in --recipe sanm-release]"}
SETTING_KEYS = ("dataset", "data_dir", "noise", "noise_file", "noise_rate", "method", "compare",
                "seed", "seeds", "device", "out", "epochs", "batch_size", "trust_noise_file",
                "recipe")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anm-train",
        description="Train image classifiers on noisy labels with CE, ANM, DivideMix or "
                    "DivideMix + ANM. With no arguments: digits, 50% symmetric noise, "
                    f"{DEFAULT_METHOD}, a few minutes on a CPU.")
    a = p.add_argument
    a("--dataset", default=None, help="digits (embedded), cifar10, cifar100, imagefolder "
                                      "[default: digits]")
    a("--data-dir", default=None, help="folder with the data (torchvision format for CIFAR; "
                                       "train/ and test/ class folders for imagefolder)")
    a("--noise", default=None, help="sym, sym-exact, asym, idn or human:KEY [default: sym]")
    a("--noise-file", default=None, help="human noisy labels: a CIFAR-N .pt file, .npy/.npz, "
                                          ".json, or a text list")
    a("--trust-noise-file", action="store_true", default=None,
      help="allow full unpickling of a .pt label file that weights_only loading refuses")
    a("--noise-rate", type=float, default=None, help="nominal noise rate [default: 0.5]")
    a("--method", default=None, help=f"one of {', '.join(METHODS)} [default: {DEFAULT_METHOD}]")
    a("--compare", default=None, help="comma-separated methods run on the same noisy labels, "
                                      "e.g. ce,dividemix,dividemix-anm")
    a("--epochs", type=int, default=None, help="epochs [default: per-data-set preset]")
    a("--batch-size", type=int, default=None, help="batch size (DivideMix: labeled = unlabeled)")
    a("--seed", type=int, default=None, help="first seed [default: 0]")
    a("--seeds", type=int, default=None, help="number of seeds (seed, seed+1, ...) [default: 1]")
    a("--out", default=None, help="run folder [default: runs/<time>-<settings>]; an existing "
                                  "folder is never overwritten (a -2, -3 suffix is added)")
    a("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR from its "
                                                        "checkpoints, with its saved settings")
    a("--device", default=None, help="auto, cpu, cuda, cuda:1 [default: auto]")
    a("--config", default=None, metavar="FILE", help="JSON or TOML file with settings and "
                                                     "hyper-parameters")
    a("--recipe", default=None, help=f"a whole released set-up: {', '.join(RECIPES)} (its values "
                                     f"lie under --config and flags)")
    a("--print-config", action="store_true", help="print the resolved settings and "
                                                  "hyper-parameters as one JSON object and exit")
    g = p.add_argument_group("method hyper-parameters (defaults: per-setting presets)")
    for name, typ in HP_FLAGS.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other hyper-parameter (JSON value), e.g. --set prior_penalty=false")
    for name, text in HP_SWITCHES.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name,
                       action=argparse.BooleanOptionalAction, default=None, help=text)
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bar / epoch lines")
    o.add_argument("--no-plots", action="store_true", help="skip PNG plots")
    return p


def load_config(path: str) -> Dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if path.lower().endswith(".toml"):
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            import tomli as tomllib
        with open(path, "rb") as f:
            return tomllib.load(f)
    with open(path) as f:
        return json.load(f)


def _norm(key: str) -> str:
    return key.replace("-", "_")


def settings_from(args: argparse.Namespace) -> (Settings, Optional[str], Dict):
    cfg: Dict = load_config(args.config) if args.config else {}
    cfg = {_norm(k): v for k, v in cfg.items()}
    method_hp = {m: {_norm(k): v for k, v in d.items()} for m, d in cfg.pop("methods", {}).items()}
    flags = {k: v for k, v in vars(args).items() if v is not None}

    def pick(key, default=None):
        if key in flags:
            return flags[key]
        return cfg.get(key, default)

    hp: Dict = {}
    for k, v in cfg.items():
        if k not in SETTING_KEYS and k != "config":
            hp[k] = v
    for k in HP_FLAGS:
        if k in flags:
            hp[k] = flags[k]
    for name in HP_SWITCHES:
        if pick(name) is not None:
            hp[name] = bool(pick(name))
    for kv in args.set:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}")
        try:
            hp[_norm(k)] = json.loads(v)
        except json.JSONDecodeError:
            hp[_norm(k)] = v
    for key in ("epochs", "batch_size"):
        if pick(key) is not None:
            hp[key] = pick(key)
    # a recipe's values lie under the config file's and the flags'
    hp = {**recipe_hp(pick("recipe"), pick("dataset", "digits")), **hp}
    unknown = [k for k in hp if k not in COMMON and k not in ("epochs", "batch_size")]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; hyper-parameters are: "
                         f"{', '.join(sorted(COMMON))}")
    compare = pick("compare")
    if compare:
        methods = [m.strip() for m in (compare.split(",") if isinstance(compare, str) else compare)
                   if m.strip()]
    else:
        methods = [pick("method", DEFAULT_METHOD)]
    for m in methods + list(method_hp):
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}: choose one of {', '.join(METHODS)}")
    noise = pick("noise", "sym")
    parse_noise(noise)
    seed, n_seeds = int(pick("seed", 0)), int(pick("seeds", 1))
    if n_seeds < 1:
        raise ValueError("--seeds must be >= 1")
    s = Settings(dataset=pick("dataset", "digits"), data_dir=pick("data_dir"), noise=noise,
                 noise_file=pick("noise_file"), noise_rate=float(pick("noise_rate", 0.5)),
                 methods=methods, seeds=list(range(seed, seed + n_seeds)), device=pick("device"),
                 hp=hp, method_hp=method_hp, trust_noise_file=bool(pick("trust_noise_file", False)),
                 progress=not args.no_progress, plots=not args.no_plots)
    return s, pick("out"), cfg


def _save_settings(s: Settings, out: str) -> None:
    import dataclasses

    # via a temp file: a run killed right here must still be resumable with --resume
    path = os.path.join(out, "run_config.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dataclasses.asdict(s), f, indent=2)
    os.replace(path + ".tmp", path)


def _load_settings(run_dir: str) -> Settings:
    path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {run_dir}: no run_config.json there (not a run folder)")
    with open(path) as f:
        return Settings(**json.load(f))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dist.init(args.device)  # torchrun: join the process group (no-op otherwise)
    except (ValueError, RuntimeError) as e:
        print(f"anm-train: error: torch.distributed: {e}", file=sys.stderr)
        return 2
    try:
        return _main(args)
    finally:
        dist.shutdown()


def _main(args: argparse.Namespace) -> int:
    main_rank = dist.is_main()
    try:
        if args.resume:
            s = _load_settings(args.resume)
            out = args.resume
            # a resumed run keeps its settings; only the length and the output may change
            if args.epochs is not None:
                s.hp["epochs"] = args.epochs
            if args.device is not None:
                s.device = args.device
            s.progress, s.plots = not args.no_progress, not args.no_plots
        else:
            s, out, _ = settings_from(args)
            if args.print_config:
                if main_rank:
                    print(json.dumps(resolved_config(s, args.recipe), indent=2))
                return 0
            if out is None:
                what = ("compare-" + "-".join(s.methods)) if len(s.methods) > 1 else s.methods[0]
                out = os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-{s.dataset}-"
                                           f"{s.noise.replace(':', '-')}{s.noise_rate:g}-{what}")
            if main_rank:
                free = free_folder(out)
                if free != out:
                    print(f"{out} exists: writing to {free} instead", file=sys.stderr)
                out = free
                os.makedirs(out, exist_ok=True)
                _save_settings(s, out)
            out = dist.broadcast_object(out)  # one folder for all ranks, chosen by rank 0
        with preempt.handle_signals():
            result = run(s, out)
    except preempt.Preempted as e:
        if main_rank:
            print(f"\nanm-train: {e} received: stopped at a step boundary. The last completed "
                  f"epoch's checkpoint is in {os.path.abspath(out)}; continue with\n"
                  f"  anm-train --resume {out}", file=sys.stderr)
        return 128 + e.signum
    except (ValueError, FileNotFoundError, ImportError, CheckpointError) as e:
        print(f"anm-train: error: {e}", file=sys.stderr)
        return 2
    if main_rank:
        _print_summary(result, out)
    return 0


def resolved_config(s: Settings, recipe: Optional[str]) -> Dict:
    """What a run with these settings would use: settings, and per method its hyper-parameters
    and (ANM methods) its ANMConfig. Nothing is loaded but an image folder's class names."""
    import dataclasses

    from .data import image_folder_preset
    from .loop import _hp_for

    kind, _ = parse_noise(s.noise)
    preset = image_folder_preset(s.data_dir) if s.dataset == "imagefolder" else None
    out: Dict = {"settings": {"dataset": s.dataset, "data_dir": s.data_dir, "presets_of": preset
                              or s.dataset, "noise": s.noise, "noise_file": s.noise_file,
                              "noise_rate": s.noise_rate, "methods": s.methods, "seeds": s.seeds,
                              "device": s.device, "recipe": recipe},
                 "hyper_parameters": {}, "anm_config": {}}
    for m in s.methods:
        hp = _hp_for(s, m, kind, preset)
        out["hyper_parameters"][m] = hp
        if m in ("anm", "dividemix-anm"):
            out["anm_config"][m] = dataclasses.asdict(anm_config(hp))
    return out


def _print_summary(result: Dict, out: str) -> None:
    res = result["results"]
    print()
    print(f"{result['dataset']}, noise {result['noise']} {result['noise_rate']:g}, "
          f"device {result['device']}")
    if len(res) == 1 and len(next(iter(res.values()))) == 1:
        (m, per_seed), = res.items()
        r = next(iter(per_seed.values()))
        print(f"method {m}: test accuracy last epoch {100 * r['last']:.2f}%, best "
              f"{100 * r['best']:.2f}%, mean of last 10 {100 * r['mean_last10']:.2f}%")
        print(f"label quality ROC AUC (truly clean vs noisy): {r['quality_auc']:.3f}; "
              f"realised noise rate {100 * r['realised_noise_rate']:.2f}%")
    else:
        print(table(res))
    print(f"run folder: {os.path.abspath(out)}")
