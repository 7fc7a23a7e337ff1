"""`anm-train`: command-line flags and config files -> Settings -> loop.run -> printed summary.

Precedence, lowest first: general defaults, the preset (--preset, or chosen from the data and
the device), the per-noise method preset, the --config file, then flags. A config file (JSON or
TOML) may set any flag by its long name (dashes or underscores) and any hyper-parameter, and hold
per-method tables, e.g.
    {"noise_rate": 0.8, "lambda_u": 25, "methods": {"dividemix": {"p_threshold": 0.6}}}
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Dict, List, Optional

from . import distributed as dist
from . import ownership, preempt
from ..models import MODELS, check_model_name
from .data import DATASETS
from .errors import EXPECTED_ERRORS, one_line
from .loop import Settings, resolved_hp, run
from .methods import METHODS, get_method
from .noise import SYNTHETIC, parse_noise
from .presets import COMMON, PRESETS, anm_config
from .recipes import RECIPES, recipe_hp
from .reporting import table
from .settings_check import check_settings
from .single_run import LABEL_ISSUES

DEFAULT_METHOD = "dividemix-anm"

# flag -> hyper-parameter name (type)
HP_FLAGS = {
    "model": str, "width": int, "lr": float, "momentum": float, "weight_decay": float, "schedule": str,
    "lr_step": int, "warmup": int, "alpha": float, "T": float, "lambda_u": float, "rampup": int,
    "p_threshold": float, "recon_weight": float, "anm_preset": str, "anm_area_lo": float,
    "anm_area_hi": float, "anm_area_scale": float, "anm_quality_gain": float,
    "anm_label_gain": float, "eval_every": int, "image_size": int, "train_subset": int, "pretrained": str, "threads": int,
}
HP_HELP = {
    "model": f"network: {', '.join(MODELS)}, or timm:NAME for any timm model (random init)",
    "width": "channel width of small_cnn / preact_resnet18 (e.g. 16, 32, 64)",
    "lr": "SGD learning rate", "momentum": "SGD momentum", "weight_decay": "SGD weight decay",
    "schedule": "learning-rate schedule: step (x0.1 at --lr-step) or cosine",
    "lr_step": "epoch of the x0.1 step (schedule step)",
    "warmup": "epochs of plain cross-entropy before the noise-aware method starts",
    "alpha": "MixUp Beta(alpha, alpha) (DivideMix)", "T": "sharpening temperature (DivideMix)",
    "lambda_u": "weight of the unlabeled loss (DivideMix)",
    "rampup": "epochs over which lambda_u ramps up (DivideMix)",
    "p_threshold": "clean-posterior threshold of the labeled split (DivideMix), in (0, 1)",
    "recon_weight": "weight of the ANM reconstruction loss",
    "anm_preset": "ANM box sizes: cifar, clothing1m, sanm-official or digits",
    "anm_area_lo": "ANM: smallest box area ratio", "anm_area_hi": "ANM: largest box area ratio",
    "anm_area_scale": "ANM: box area scale", "anm_quality_gain": "ANM: quality gain",
    "anm_label_gain": "ANM: label-softening gain",
    "image_size": "image folders: side length the images are resized to",
    "train_subset": "train on the first N training images only (quick trials)",
    "pretrained": "a local state_dict file to start from (nothing is downloaded)",
    "threads": "CPU threads for torch (1 is often faster on a busy 2-core machine)",
    "eval_every": "evaluate on the test set every N epochs (and after the last)",
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
                "recipe", "preset")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anm-train",
        description="Train image classifiers on noisy labels with CE, ANM, DivideMix or "
                    "DivideMix + ANM. With no arguments: digits, 50% symmetric noise, "
                    f"{DEFAULT_METHOD}, a few minutes on a CPU.")
    a = p.add_argument
    a("--dataset", default=None,
      help=f"{', '.join(DATASETS)} (digits is embedded) [default: digits]")
    a("--preset", default=None,
      help=f"hyper-parameter preset: {', '.join(PRESETS)} [default: chosen from the data set, "
           f"the number and size of its images and the device; printed at start]")
    a("--data-dir", default=None, help="folder with the data (torchvision format for CIFAR; "
                                       "train/ and test/ class folders for imagefolder)")
    a("--noise", default=None,
      help="none (train on the labels as given), sym, sym-exact, asym, idn (synthetic noise "
           "added to clean labels), or human[:KEY] (a label list, --noise-file) [default: none "
           "for imagefolder, human with --noise-file, else sym]")
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
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=HP_HELP[name])
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other hyper-parameter (JSON value), e.g. --set prior_penalty=false")
    for name, text in HP_SWITCHES.items():
        g.add_argument("--" + name.replace("_", "-"), dest=name,
                       action=argparse.BooleanOptionalAction, default=None, help=text)
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress bar (bars are drawn only on a terminal; the one-line epoch "
                        "summaries are always printed)")
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
            try:
                return tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: not valid TOML ({e})") from None
    return _read_json(path)


def _read_json(path: str):
    """A JSON file's content; ValueError naming the file when it is damaged."""
    with open(path) as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


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
    dataset = pick("dataset", "digits")
    noise = pick("noise", default_noise(dataset, pick("noise_file")))
    parse_noise(noise)
    if parse_noise(noise)[0] == "human" and not pick("noise_file"):
        raise ValueError("--noise human needs --noise-file: a label list (see the README, "
                         "'Label lists')")
    for path_key in ("data_dir", "noise_file"):  # absolute: a resume from elsewhere finds them
        if pick(path_key):
            flags[path_key] = os.path.abspath(os.path.expanduser(pick(path_key)))
    if "model" in hp:
        check_model_name(hp["model"])
    for m, d in method_hp.items():
        if "model" in d:
            check_model_name(d["model"])
    seed, n_seeds = int(pick("seed", 0)), int(pick("seeds", 1))
    if n_seeds < 1:
        raise ValueError("--seeds must be >= 1")
    s = Settings(dataset=dataset, data_dir=pick("data_dir"), noise=noise,
                 noise_file=pick("noise_file"), noise_rate=float(pick("noise_rate", 0.5)),
                 methods=methods, seeds=list(range(seed, seed + n_seeds)), device=pick("device"),
                 hp=hp, method_hp=method_hp, trust_noise_file=bool(pick("trust_noise_file", False)),
                 progress=not args.no_progress, plots=not args.no_plots, preset=pick("preset"))
    return s, pick("out"), cfg


def default_noise(dataset: str, noise_file: Optional[str]) -> str:
    """Data that brings its own labels trains on them as given; a label list means human noise;
    the benchmark sets (digits, CIFAR) get synthetic symmetric noise."""
    if noise_file:
        return "human"
    return "none" if dataset == "imagefolder" else "sym"


def _save_settings(s: Settings, out: str, resolved: Optional[Dict] = None) -> None:
    """run_config.json: the settings (what --resume reads) and, under "resolved", every method's
    whole hyper-parameter dict as the run uses it."""
    import dataclasses

    resolved = resolved_hp(s) if resolved is None else resolved

    # via a temp file: a run killed right here must still be resumable with --resume
    path = os.path.join(out, "run_config.json")
    with open(path + ".tmp", "w") as f:
        json.dump({**dataclasses.asdict(s), "resolved": resolved}, f, indent=2, allow_nan=False)
    os.replace(path + ".tmp", path)


def _load_settings(run_dir: str) -> Settings:
    import dataclasses

    path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {run_dir}: no run_config.json there (not a run folder)")
    saved = _read_json(path)
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: not the settings of an anm-train run (a JSON "
                         f"{type(saved).__name__}, not an object)")
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in saved.items() if k in names})


# the settings printed at start (all of them are in run_config.json)
SHOWN = ("model", "width", "image_size", "epochs", "batch_size", "lr", "schedule", "warmup")


def _print_settings(s: Settings, resolved: Dict, out: str) -> None:
    print(f"preset {s.preset}: {s.preset_reason}", file=sys.stderr)
    for m, hp in resolved.items():
        shown = "  ".join(f"{k}={hp[k]}" for k in SHOWN if hp.get(k) is not None and
                          (k != "image_size" or s.dataset == "imagefolder"))
        print(f"{m}: {shown}", file=sys.stderr)
    print(f"all settings: {os.path.join(out, 'run_config.json')}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.program = argv is None  # anm-train itself, not a call from Python
    try:
        dist.init(args.device)  # torchrun: join the process group (no-op otherwise)
    except (ValueError, RuntimeError) as e:
        print(f"anm-train: error: torch.distributed: {e}", file=sys.stderr)
        return 2
    finished = False
    try:
        code = _main(args)
        finished = True
    finally:
        dist.shutdown(finished)
    if args.program and dist.launched():
        dist.exit_process(code)  # torchrun: no interpreter finalization (see exit_process)
    return code


def _main(args: argparse.Namespace) -> int:
    main_rank = dist.is_main()
    out = args.resume
    # Signals are handled from here to the process's exit (argv None: anm-train itself), so a
    # second SIGTERM while stopping cannot kill the process before its message and exit code.
    with preempt.handle_signals(ignore_after_stop=args.program):
        try:
            with contextlib.ExitStack() as owned:
                if args.resume:
                    s = _load_settings(args.resume)
                    # a resumed run keeps its settings; only the length and the output may change
                    if args.epochs is not None:
                        s.hp["epochs"] = args.epochs
                    if args.device is not None:
                        s.device = args.device
                    s.progress, s.plots = not args.no_progress, not args.no_plots
                    check_settings(s)
                    resolved = resolved_hp(s)
                    if main_rank:
                        owned.enter_context(ownership.own(out))  # before anything is written
                        _save_settings(s, out, resolved)  # the new length is the run's from now on
                        _print_settings(s, resolved, out)
                else:
                    s, out, _ = settings_from(args)
                    check_settings(s)  # names the preset too; before any folder or data
                    if args.print_config:
                        if main_rank:
                            print(json.dumps(resolved_config(s, args.recipe), indent=2))
                        return 0
                    resolved = resolved_hp(s)
                    if out is None:
                        what = (("compare-" + "-".join(s.methods)) if len(s.methods) > 1
                                else s.methods[0])
                        noise = s.noise.replace(":", "-") + (
                            f"{s.noise_rate:g}" if parse_noise(s.noise)[0] in SYNTHETIC else "")
                        out = os.path.join("runs", f"{time.strftime('%Y%m%d-%H%M%S')}-"
                                                   f"{s.dataset}-{noise}-{what}")
                    if main_rank:
                        free = owned.enter_context(ownership.claim_new(out))
                        if free != out:
                            print(f"{out} exists: writing to {free} instead", file=sys.stderr)
                        out = free
                        _save_settings(s, out, resolved)
                        _print_settings(s, resolved, out)
                    out = dist.broadcast_object(out)  # one folder for all ranks, chosen by rank 0
                result = run(s, out)
        except preempt.Preempted as e:
            if main_rank:
                print(f"\nanm-train: {e} received: stopped at a step boundary. The last "
                      f"completed epoch's checkpoint is in {os.path.abspath(out)}; continue "
                      f"with\n  anm-train --resume {out}", file=sys.stderr)
            return 128 + e.signum
        except EXPECTED_ERRORS as e:
            print(f"anm-train: error: {one_line(e)}", file=sys.stderr)
            return 2
    if main_rank:
        _print_summary(result, out)
    return 0


def resolved_config(s: Settings, recipe: Optional[str]) -> Dict:
    """What a run with these settings would use: settings, and per method its hyper-parameters
    and (ANM methods) its ANMConfig. Nothing is loaded but an image folder's class names."""
    import dataclasses

    from .loop import _hp_for

    kind, _ = parse_noise(s.noise)
    out: Dict = {"settings": {"dataset": s.dataset, "data_dir": s.data_dir, "preset": s.preset,
                              "preset_reason": s.preset_reason, "noise": s.noise,
                              "noise_file": s.noise_file,
                              "noise_rate": s.noise_rate, "methods": s.methods, "seeds": s.seeds,
                              "device": s.device, "recipe": recipe},
                 "hyper_parameters": {}, "anm_config": {}}
    for m in s.methods:
        hp = _hp_for(s, m, kind)
        out["hyper_parameters"][m] = hp
        if get_method(m).uses_anm:
            out["anm_config"][m] = dataclasses.asdict(anm_config(hp))
    return out


def _print_summary(result: Dict, out: str) -> None:
    res = result["results"]
    print()
    synthetic = parse_noise(result["noise"])[0] in SYNTHETIC
    noise = f"{result['noise']} {result['noise_rate']:g}" if synthetic else result["noise"]
    print(f"{result['dataset']}, noise {noise}, device {result['device']}")
    if len(res) == 1 and len(next(iter(res.values()))) == 1:
        (m, per_seed), = res.items()
        (seed, r), = per_seed.items()
        print(f"method {m}: test accuracy last epoch {100 * r['last']:.2f}%, best "
              f"{100 * r['best']:.2f}%, mean of last 10 {100 * r['mean_last10']:.2f}%")
        if "quality_auc" in r:
            print(f"label quality ROC AUC (truly clean vs noisy): {r['quality_auc']:.3f}; "
                  f"realised noise rate {100 * r['realised_noise_rate']:.2f}%")
        li = r.get("label_issues", {})
        if li:
            print(issues_line(li) + f": {os.path.join(out, m, 'seed' + seed, LABEL_ISSUES)}")
    else:
        print(table(res))
    print(f"run folder: {os.path.abspath(out)}")


def issues_line(li: Dict) -> str:
    """'123 of 1347 labels flagged as suspect (precision 0.95, recall 0.90)' from a summary."""
    line = f"{li['flagged']} of {li['samples']} labels flagged as suspect (quality < " \
           f"{li['threshold']:g})"
    known = [f"{k.replace('_', ' ')} {li[k]:.3f}" for k in ("precision", "recall",
                                                              "precision_at_k") if k in li]
    if known:
        line += f"; truly mislabeled {li['truly_mislabeled']}: " + ", ".join(known)
    return line
