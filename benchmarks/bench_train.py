"""Training-step throughput: in-memory cached images vs decoding the JPEG every step.

For each backbone the same model and the same images go through `maskkit.train.train_one_epoch`
with two loaders, alternating epochs so machine load hits both alike:
  * cached:  `maskkit.datasets.preload` decodes every image once, resized to the training size;
             each step only flips and normalises (the maskkit loader);
  * decode:  each item is read from disk, decoded and resized every epoch (the teams' loader).
Prints images/s of each, the ratio, the loader-only throughput and the one-off cache build time.
First, the model step alone (a fixed batch, no loader) in fp32 / channels-last / bf16 autocast / both, which
is the ceiling the loader can reach and shows how much of a step is the model.
`--canvas 384x512` composes each photo into a competition-size JPEG first (see bench_faces.py), so "decode"
pays what decoding the competition's photos costs; utkmask's own are 200x200.

    .venv/bin/python benchmarks/bench_train.py [--data-root DIR] [--n-images 256] [--img-size 128] [--canvas 384x512]
    # on a GPU: --backbones efficientnet_b0 --img-size 224 --amp bf16 --num-workers 8 --n-images 2048
"""
import argparse, shutil, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd, torch
import maskkit
from maskkit import data
from maskkit.augment import build_transforms
from maskkit.datasets import preload, MaskDataset, make_loader, loader_throughput
from maskkit.losses import make_loss
from maskkit.models import build_model, model_data_config
from maskkit.train import TrainConfig, get_device, make_optimizer, seed_everything, train_one_epoch
from bench_faces import canvas_size, compose


def step_probe(bb, batch, steps=8, device="cpu"):
    "Images/s of `train_one_epoch` over one fixed batch, per precision setting: the training step with no loader."
    out = {}
    for cl in (False, True):
        for amp in ("none", "bf16"):
            seed_everything(0)
            model = build_model(bb, pretrained=False).to(device)
            if cl: model = model.to(memory_format=torch.channels_last)
            cfg = TrainConfig(lr=1e-4, progress=False, amp=amp, channels_last=cl)
            opt, loss = make_optimizer(model, cfg), make_loss("ce")
            train_one_epoch(model, [batch] * 2, loss, opt, cfg=cfg)  # warm-up: allocator, oneDNN/cuDNN kernels
            r = train_one_epoch(model, [batch] * steps, loss, opt, cfg=cfg)
            out[("channels_last " if cl else "") + ("bf16" if amp == "bf16" else "fp32")] = r["images_per_s"]
    return out


def pick_images(root, n, seed):
    df = data.load_train(root, verbose=False)
    if n and n < len(df): df = df.sample(n, random_state=seed)
    return df.reset_index(drop=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="default: /work/shared/data/utkmask if present, else the demo set")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loader (after one warm-up epoch each)")
    ap.add_argument("--backbones", default="resnet10t,tf_efficientnet_lite0", help="small,medium")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--amp", default="none", help="none | bf16: autocast of the timed training epochs")
    ap.add_argument("--no-channels-last", action="store_true", help="train NCHW (04_train's default is channels-last)")
    ap.add_argument("--canvas", type=canvas_size, default=None, help="WxH: compose each photo into a JPEG of this size first")
    a = ap.parse_args()

    if a.threads: torch.set_num_threads(a.threads)
    root = a.data_root
    if root is None:
        shared = data.project_root().parent / "shared" / "data" / "utkmask"
        if shared.exists(): root = shared
        else:
            from maskkit.demo import ensure_demo_dataset
            root = ensure_demo_dataset(data.project_root() / "data" / "demo")
    df = pick_images(root, a.n_images, a.seed)
    scratch = Path(tempfile.mkdtemp(prefix="bench_train_")) if a.canvas else None
    if a.canvas: df["path"] = [str(p) for p in compose([Path(p) for p in df.path], a.canvas, scratch)]
    h0, w0 = data.load_image(df.path.iloc[0]).shape[:2]
    print(f"data {root}: {len(df)} images ({w0}x{h0} JPEG), train size {a.img_size}, batch {a.batch_size}, "
          f"{a.num_workers} workers, torch threads {torch.get_num_threads()}, amp {a.amp}, channels-last {not a.no_channels_last}")

    t0 = time.perf_counter()
    cache = preload(df, "path", size=(a.img_size, a.img_size), progress=False)
    build_s = time.perf_counter() - t0
    size = (a.img_size, a.img_size)
    rows = []
    for bb in a.backbones.split(","):
        seed_everything(a.seed)
        model = build_model(bb, pretrained=False)
        dc = model_data_config(model)
        tf = build_transforms(("hflip",), size=size, train=True, mean=dc["mean"], std=dc["std"])
        probe_batch = next(iter(make_loader(MaskDataset(df, tf, "path", cache), a.batch_size, shuffle=False)))
        probe = step_probe(bb, probe_batch, device=get_device("auto"))
        print(f"{bb} model step alone (img/s): " + ", ".join(f"{k} {v:.1f}" for k, v in probe.items()), flush=True)
        loaders = {"cached": make_loader(MaskDataset(df, tf, "path", cache), a.batch_size, shuffle=True, seed=a.seed,
                                         num_workers=a.num_workers, drop_last=True),
                   "decode": make_loader(MaskDataset(df, tf, "path", None), a.batch_size, shuffle=True, seed=a.seed,
                                         num_workers=a.num_workers, drop_last=True)}
        cfg = TrainConfig(lr=1e-4, progress=False, amp=a.amp, channels_last=not a.no_channels_last)
        model = model.to(get_device(cfg.device))
        if cfg.channels_last: model = model.to(memory_format=torch.channels_last)
        opt, loss = make_optimizer(model, cfg), make_loss("ce")
        secs = {k: 0.0 for k in loaders}; imgs = {k: 0 for k in loaders}
        for k, dl in loaders.items(): train_one_epoch(model, dl, loss, opt, cfg=cfg)   # warm-up
        for _ in range(a.epochs):
            for k, dl in loaders.items():                                               # alternate
                r = train_one_epoch(model, dl, loss, opt, cfg=cfg)
                secs[k] += r["seconds"]; imgs[k] += len(dl) * a.batch_size
        lt = {k: loader_throughput(dl) for k, dl in loaders.items()}
        ips = {k: imgs[k] / secs[k] for k in loaders}
        step_key = ("channels_last " if cfg.channels_last else "") + ("bf16" if a.amp == "bf16" else "fp32")
        rows.append({"backbone": bb, "step alone img/s": probe[step_key], "cached img/s": ips["cached"], "decode img/s": ips["decode"],
                     "train ratio": ips["cached"] / ips["decode"], "loader-only cached": lt["cached"],
                     "loader-only decode": lt["decode"], "loader ratio": lt["cached"] / lt["decode"]})
        print(pd.DataFrame(rows[-1:]).round(2).to_string(index=False), flush=True)
    print(f"\ncache build (one-off): {build_s:.1f}s for {len(df)} images = {len(df)/build_s:.0f} img/s")
    res = pd.DataFrame(rows).round(2)
    print(res.to_string(index=False))
    for r in rows:
        print(f"{r['backbone']}: cached loader trains {r['train ratio']:.2f}x the images/s of decoding every epoch "
              f"(loader alone {r['loader ratio']:.1f}x); target >= 3x. The model step alone runs "
              f"{r['step alone img/s']:.0f} img/s: the cached loader reaches {100 * r['cached img/s'] / r['step alone img/s']:.0f}% "
              f"of it, and no loader can make training faster than {r['step alone img/s'] / r['decode img/s']:.2f}x the decode loader here.")
    if scratch: shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
