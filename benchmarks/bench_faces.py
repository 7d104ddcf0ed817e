"""Face stage speed: naive per-image MTCNN (as the teams ran it) vs the batched stage, the cache, centre crop, decode.

    .venv/bin/python benchmarks/bench_faces.py [--n 200] [--images DIR] [--full]

All timings are on the same images in one run; ratios are against the naive loop. `--full` also runs the batched
stage once on every image under --images and prints the detection rate per mask state (CPU heavy).
The crop cache is built in a temporary folder of symlinks (nothing is written next to the data).
"""
import argparse, os, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import maskkit  # noqa: F401  (torchvision hook before facenet_pytorch)
from maskkit import faces
from maskkit.data import IMAGE_EXTS, load_image

DEFAULT = "/work/shared/data/utkmask/train/images"
STATE = {"normal": "not wear", "incorrect_mask": "incorrect"}


def sample(images, n):
    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files: sys.exit(f"no images under {images}")
    if n and n < len(files): files = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return files


def timed(label, fn, n, results):
    t = time.perf_counter(); out = fn(); dt = time.perf_counter() - t
    results[label] = n / dt
    print(f"{label:<34} {n / dt:9.1f} img/s  ({dt:6.2f} s)", flush=True)
    return out


def naive(files, threads=None):
    "The teams' loop: one MTCNN, one PIL image at a time, full resolution (torch threads as set, or `threads`)."
    from facenet_pytorch import MTCNN
    m = MTCNN(device=faces.default_device())
    probs = []
    with faces.torch_threads(threads):
        for f in files:
            boxes, p = m.detect(Image.open(f).convert("RGB"))
            probs.append(np.nan if boxes is None else float(np.max(p)))
    return np.array(probs)


def decode(files):
    for f in files: load_image(f)


def centre_crop(files, size=(256, 256)):
    for f in files:
        img = load_image(f)
        x1, y1, x2, y2, _ = faces.crop_box(dict(method="fallback", width=img.shape[1], height=img.shape[0]),
                                           aspect=size[0] / size[1])
        Image.fromarray(img[y1:y2, x1:x2]).resize(size, Image.BILINEAR)


def mask_state(path): return STATE.get(Path(path).stem, "wear")


def centred(d):
    "Share of found boxes holding the image centre (true for the tight utkmask faces; boxes may pass the edges)."
    d = d[d.method == "mtcnn"]
    w, h = d.width.astype(float) / 2, d.height.astype(float) / 2
    return f"boxes on the centre {100 * np.mean((d.x1 < w) & (d.x2 > w) & (d.y1 < h) & (d.y2 > h)):.1f}%"


def rates(found, prob):
    return f"any face {100 * np.mean(found):5.1f}%   prob>=0.9 {100 * np.mean(np.nan_to_num(prob) >= 0.9):5.1f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images to time (spread over the folder)")
    ap.add_argument("--images", default=DEFAULT, help="folder of images (searched recursively)")
    ap.add_argument("--detect-size", type=int, default=160)
    ap.add_argument("--min-face-size", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the batched stage (faces' default 1)")
    ap.add_argument("--skip-naive", action="store_true", help="skip the naive loop with torch's default threads")
    ap.add_argument("--full", action="store_true", help="also detect every image once: rate per mask state")
    a = ap.parse_args()
    import torch
    files = sample(a.images, a.n)
    n = len(files)
    print(f"{n} images from {a.images}; device {faces.default_device()}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    kw = dict(batch_size=a.batch_size, detect_size=a.detect_size, min_face_size=a.min_face_size, threads=a.threads)
    faces.mtcnn_detect(np.zeros((1, 64, 64, 3), np.uint8), min_face_size=a.min_face_size)  # build the nets once
    r = {}
    timed("decode only (floor)", lambda: decode(files), n, r)
    timed("plain centre crop", lambda: centre_crop(files), n, r)
    nv = None if a.skip_naive else timed(f"naive loop ({torch.get_num_threads()} threads)", lambda: naive(files), n, r)
    nv1 = timed("naive loop (1 thread)", lambda: naive(files, threads=1), n, r)
    det = timed("batched detect_faces (cold)", lambda: faces.detect_faces(files, progress=False, **kw), n, r)
    tmp = Path(tempfile.mkdtemp(prefix="bench_faces_"))
    try:
        for i, f in enumerate(files):   # a split folder of symlinks, so the cache is not written next to the data
            link = tmp / "images" / f"{i:06d}_{f.parent.name}" / f.name
            link.parent.mkdir(parents=True, exist_ok=True); link.symlink_to(f.resolve())
        timed("build_crop_cache (cold: +crops)", lambda: faces.build_crop_cache(tmp, progress=False, **kw), n, r)
        timed("build_crop_cache (cached rerun)", lambda: faces.build_crop_cache(tmp, progress=False, **kw), n, r)
        t = faces.build_crop_cache(tmp, progress=False, **kw)
        timed("read cached crops (decode 256px)", lambda: decode(t.crop_path), n, r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    n2 = [k for k in r if k.startswith("naive loop (") and "(1 thread)" not in k]
    print(f"{'':<34} {'vs naive ' + n2[0][11:-1] if n2 else '':>18} {'vs naive 1 thread':>18}")
    for k, v in r.items():
        print(f"{k:<34} {v / r[n2[0]] if n2 else float('nan'):17.2f}x {v / r['naive loop (1 thread)']:17.2f}x")
    print(f"cached rerun / decode floor: {r['build_crop_cache (cached rerun)'] / r['decode only (floor)']:.2f}x")
    print()
    found_b, prob_b = (det.method == "mtcnn").to_numpy(), det.prob.astype(float).to_numpy()
    print(f"detection batched: {rates(found_b, prob_b)}; {centred(det)}")
    print(f"detection naive:   {rates(~np.isnan(nv1), nv1)}")
    print(f"agreement (any face): {100 * np.mean(found_b == ~np.isnan(nv1)):.1f}%")
    if nv is not None: print(f"naive default threads == naive 1 thread: {np.array_equal(np.isnan(nv), np.isnan(nv1))}")
    if a.full:
        every = sample(a.images, 0)
        print(f"\nfull run: {len(every)} images")
        d = timed("batched detect_faces (full)", lambda: faces.detect_faces(every, **kw), len(every), {})
        d["mask_state"] = d.path.map(mask_state)
        d["face"] = d.method == "mtcnn"
        d["face_p90"] = d.face & (d.prob.astype(float) >= 0.9)
        print(d.groupby("mask_state")[["face", "face_p90"]].mean().mul(100).round(1).assign(n=d.groupby("mask_state").size()).to_string())
        print(f"all: any face {100 * d.face.mean():.1f}%, prob>=0.9 {100 * d.face_p90.mean():.1f}%, "
              f"{centred(d)}, errors {(d.method == 'error').sum()}")


if __name__ == "__main__":
    main()
