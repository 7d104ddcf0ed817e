"""GPU throughput: training and inference images/s of EfficientNet-B4 at 380 px and Lite0 at 224 px.

For each model: the model step alone (a fixed batch: no loader) in fp32 and bf16 autocast, NCHW and channels-last,
`torch.compile` off and on; inference likewise; the loader alone (the ceiling a loader puts on the step) with
`num_workers` 0, 4 and 8; and DDP scaling 1 -> N GPUs (`torchrun`, `maskkit train` on the demo set, images/s from
the runs' metrics). Run it unchanged on a machine with CUDA GPUs; without one it says so and measures nothing
(`--cpu-smoke` runs every code path on the CPU at toy sizes, to check the script itself).

    .venv/bin/python benchmarks/bench_gpu.py                    # on a GPU machine
    .venv/bin/python benchmarks/bench_gpu.py --cpu-smoke        # anywhere: the paths, at toy sizes
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per figure (after 3 warm-up steps)")
    ap.add_argument("--gpus", type=int, default=None, help="the most GPUs for the DDP scaling (default: all)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    ap.add_argument("--cpu-smoke", action="store_true", help="run every path on the CPU at toy sizes (no figures worth quoting)")
    return ap.parse_args(argv)


def step_rate(model, x, train, amp, steps, device):
    "Images/s of `steps` forward(+backward) passes on a fixed batch `x`."
    import torch
    from maskkit.models import probs18
    opt = torch.optim.AdamW(model.parameters(), 1e-4) if train else None
    model.train(train)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else None
    def once():
        if train:
            opt.zero_grad(set_to_none=True)
            if ctx:
                with ctx(): out = model(x)
            else: out = model(x)
            probs18({k: v.float() for k, v in out.items()}).sum().backward(); opt.step()
        else:
            with torch.inference_mode():
                if ctx:
                    with ctx(): model(x)
                else: model(x)
    for _ in range(3): once()
    if device.type == "cuda": torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps): once()
    if device.type == "cuda": torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - t0)


def loader_rate(size, workers, batch, n_batches):
    "Images/s of the training loader alone (decode-free: an in-memory uint8 cache, the training transforms)."
    import numpy as np, pandas as pd
    from maskkit.augment import build_transforms
    from maskkit.datasets import MaskDataset, make_loader, loader_throughput
    class Cache(dict):
        def __getitem__(self, k): return self.arr
    cache = Cache(); cache.arr = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    df = pd.DataFrame({"path": [f"img{i}" for i in range(batch * n_batches)], "label": 0})
    for p in df.path: dict.__setitem__(cache, p, None)
    ds = MaskDataset(df, build_transforms(("hflip", "erasing"), size=size), cache=cache)
    return loader_throughput(make_loader(ds, batch, shuffle=True, num_workers=workers), max_batches=n_batches)


def main(argv=None):
    a = parse_args(argv)
    import torch
    import maskkit
    from maskkit.models import build_model
    cuda = torch.cuda.is_available()
    if not cuda and not a.cpu_smoke:
        print("no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing measured. "
              "Run this script unchanged on a GPU machine, or with --cpu-smoke to check its code paths here.")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    print(f"device: {torch.cuda.get_device_name(0) if cuda else 'CPU (smoke run: toy sizes, figures not comparable)'}; torch {torch.__version__}")
    models = [("tf_efficientnet_b4", 380), ("tf_efficientnet_lite0", 224)] if not a.cpu_smoke else [("tf_efficientnet_lite0", 64)]
    batch, steps = (a.batch_size, a.steps) if not a.cpu_smoke else (4, 2)
    rows = []
    for name, size in models:
        for amp in ("fp32", "bf16"):
            if amp == "bf16" and cuda and not torch.cuda.is_bf16_supported(): continue
            for cl in (False, True):
                for comp in ((False, True) if not a.no_compile and not a.cpu_smoke else (False,)):
                    m = build_model(name, pretrained=False).to(device)
                    x = torch.randn(batch, 3, size, size, device=device)
                    if cl: m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
                    if comp: m = torch.compile(m)
                    for train in (True, False):
                        rows.append({"model": f"{name}@{size}", "pass": "train" if train else "infer", "amp": amp, "channels_last": cl,
                                     "compile": comp, "images_per_s": step_rate(m, x, train, amp, steps, device)})
                    del m
                    if cuda: torch.cuda.empty_cache()
        for w in ((0, 4, 8) if not a.cpu_smoke else (0, 2)):
            rows.append({"model": f"{name}@{size}", "pass": f"loader alone, {w} workers", "amp": "", "channels_last": "", "compile": "",
                         "images_per_s": loader_rate(size, w, batch, 20 if not a.cpu_smoke else 2)})
    print(f"{'model':<28} {'pass':<22} {'amp':<5} {'ch-last':<8} {'compile':<8} {'images/s':>9}")
    for r in rows: print(f"{r['model']:<28} {r['pass']:<22} {r['amp']:<5} {str(r['channels_last']):<8} {str(r['compile']):<8} {r['images_per_s']:>9.1f}")
    # DDP scaling with torchrun: maskkit train on the demo set, 1 -> N processes (N GPUs; 2 CPU processes in the smoke run)
    n_max = (a.gpus or torch.cuda.device_count()) if cuda else 2
    torchrun = Path(sys.executable).parent / "torchrun"
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    base = {"limit": None if cuda else 12, "epochs": 2 if cuda else 1, "img_size": 224 if cuda else 64,
            "backbone": "tf_efficientnet_lite0", "batch_size": a.batch_size if cuda else 4, "amp": "auto"}
    scale = []
    for n in sorted({1, 2, 4, 8, n_max} & set(range(1, n_max + 1))):
        args = [str(torchrun), "--nproc_per_node", str(n), "--master_port", str(29600 + n), "-m", "maskkit", "train", "--run-name", f"ddp{n}",
                "--runs", str(tmp / "runs")] + [x for k, v in base.items() if v is not None for x in (f"--{k.replace('_', '-')}", json.dumps(v))]
        r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "MASKKIT_CACHE": str(tmp / "cache")})
        if r.returncode != 0: print(f"DDP with {n}: failed\n{r.stderr[-1500:]}"); continue
        from maskkit.runs import Run
        ips = Run.open(f"ddp{n}", tmp / "runs").metrics().images_per_s.iloc[-1]
        scale.append((n, ips))
    for n, ips in scale: print(f"DDP {n} process{'es' * (n > 1)}: {ips:.1f} images/s (x{ips / scale[0][1]:.2f} of 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
