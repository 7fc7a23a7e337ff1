"""The Python steps of bench/gpu_session.sh, one sub-command each:

  crash    every kernel once (each op, every backend that is available; CUDA kernels of the
           compiled extension and the Triton kernels), synchronised: a crash check, not a test.
  graphs   CUDA-graph capture and replay of anm_fast.anm_mask with an int seed and a device seed,
           per backend, under torch.cuda.set_sync_debug_mode("error") (a blocking copy or a host
           read inside the call fails the capture), replay equal to an eager call.
  images   images/s of the trainer runs under a folder (metrics.jsonl rows, first epoch left out).
  summary  the steps' TSV (name, status, rc, seconds, log) as one JSON file.

--dry-run runs crash and graphs on CPU tensors (no capture): it checks this script where there is
no GPU. Each sub-command prints one JSON line with what it found and exits non-zero on a failure.
"""
import argparse
import glob
import json
import os
import sys
import time


def _backends(device):
    import anm_fast
    if device == "cpu":
        return ["cpu"]
    return [b for b in ("cuda", "triton") if b in anm_fast.backend.available_backends()]


def _inputs(device, B=8, C=3, H=32, W=32, K=16, h=4, w=4, N=10):
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g).to(device)
    fmap = torch.randn(B, K, h, w, generator=g).relu().to(device)
    t = torch.softmax(torch.randn(B, N, generator=g), 1).to(device)
    q = torch.rand(B, generator=g).to(device)
    return x, fmap, t, q


def crash(device):
    import torch
    import anm_fast
    from anm_fast.config import BoxParams
    ops = torch.ops.anm_fast
    ran = []
    for backend in _backends(device):
        if device != "cpu":
            anm_fast.set_backend(backend)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for layout in (torch.contiguous_format, torch.channels_last):
                x, fmap, t, q = _inputs(device)
                x = x.to(dtype).contiguous(memory_format=layout)
                fmap = fmap.to(dtype).contiguous(memory_format=layout)
                out = anm_fast.anm_mask(x, fmap, t.to(dtype), q, seed=3)
                pmax, pmin, _ = ops.activation_peaks(fmap, 32, 32, 0.0)
                B, C = x.shape[:2]
                boxes = ops.sample_boxes(pmax, pmin, q, torch.arange(B, device=device),
                                         torch.tensor(3), 32, 32, C,
                                         BoxParams(0.02, 0.5, 0.3, 0.5, 1.0, True, True).pack(),
                                         torch.zeros(C))
                erased, t_out = ops.erase_and_modulate(x, t, boxes[0], boxes[1], boxes[3],
                                                       boxes[4], boxes[2], 1.0)
                ops.erase_and_modulate_backward(erased, t_out, t, boxes[0], boxes[1], boxes[2],
                                                1.0)
                xg = x.detach().requires_grad_(True)
                o = anm_fast.anm_mask(xg, fmap, t.to(dtype), q, seed=3)
                o.erased.float().sum().backward()
                ran.append(f"{backend}-{str(dtype).split('.')[1]}-{layout}")
                del out
        if device != "cpu":
            torch.cuda.synchronize()
    if device != "cpu":
        anm_fast.set_backend("auto")
    return {"ran": len(ran), "backends": _backends(device)}


def graphs(device):
    import torch
    import anm_fast
    results = {}
    for backend in _backends(device):
        for seed_kind in ("int", "device"):
            x, fmap, t, q = _inputs(device)
            seed = 5 if seed_kind == "int" else torch.tensor(5, device=device)
            name = f"{backend}-{seed_kind}-seed"
            if device == "cpu":
                anm_fast.anm_mask(x, fmap, t, q, seed=seed)
                results[name] = "ran (dry run: no capture)"
                continue
            anm_fast.set_backend(backend)
            anm_fast.set_checks(False)  # value checks read the device: not capturable
            try:
                want = anm_fast.anm_mask(x, fmap, t, q, seed=seed)  # warm-up: compile, cache
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    anm_fast.anm_mask(x, fmap, t, q, seed=seed)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    with torch.cuda.graph(graph):
                        got = anm_fast.anm_mask(x, fmap, t, q, seed=seed)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                graph.replay()
                torch.cuda.synchronize()
                same = all(torch.equal(a, b) for a, b in zip(got[:10], want[:10]))
                results[name] = "ok" if same else "replay differs from eager"
            except Exception as exc:  # noqa: BLE001 - reported per case, the step fails
                results[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            finally:
                anm_fast.set_checks(True)
                anm_fast.set_backend("auto")
    return results


def images(folder):
    rates = {}
    for path in sorted(glob.glob(os.path.join(folder, "**", "metrics.jsonl"), recursive=True)):
        rows = [json.loads(line) for line in open(path) if line.strip()]
        cfg_path = os.path.join(os.path.dirname(path), "run_config.json")
        n_train = 50000
        if os.path.exists(cfg_path):
            n_train = json.load(open(cfg_path)).get("train_size", n_train)
        secs = [r["seconds"] for r in rows[1:]] or [r["seconds"] for r in rows]
        if secs:
            rates[os.path.relpath(path, folder)] = round(n_train * len(secs) / sum(secs), 1)
    return {"images_per_s": rates, "note": "epochs after the first; seconds include the test pass"}


def summary(tsv, out):
    steps = []
    for line in open(tsv):
        name, status, rc, seconds, log = line.rstrip("\n").split("\t")
        steps.append({"step": name, "status": status, "rc": int(rc), "seconds": int(seconds),
                      "log": log})
    info = {"steps": steps, "ok": all(s["status"] in ("ok", "skipped") for s in steps),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - the summary is written whatever is importable
        pass
    with open(out, "w") as f:
        json.dump(info, f, indent=2)
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("crash", "graphs", "images", "summary"))
    p.add_argument("--dry-run", action="store_true", help="CPU tensors, no GPU needed")
    p.add_argument("--folder", help="images: the runs' folder")
    p.add_argument("--tsv", help="summary: the steps' TSV")
    p.add_argument("--out", help="summary: the JSON file to write")
    a = p.parse_args(argv)
    device = "cpu" if a.dry_run else "cuda"
    if a.command in ("crash", "graphs") and device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print(json.dumps({"error": "no CUDA device (use --dry-run without a GPU)"}))
            return 2
    if a.command == "crash":
        res = crash(device)
        ok = res["ran"] > 0
    elif a.command == "graphs":
        res = graphs(device)
        ok = bool(res) and all(v == "ok" or v.startswith("ran") for v in res.values())
    elif a.command == "images":
        res = images(a.folder)
        ok = bool(res["images_per_s"])
    else:
        res = summary(a.tsv, a.out)
        ok = res["ok"]
    print(json.dumps(res))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
