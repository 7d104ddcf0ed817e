"""Face stage speed: naive per-image MTCNN (as the teams ran it) vs the batched stage, the cache, centre crop, decode.

    .venv/bin/python benchmarks/bench_faces.py [--n 200] [--images DIR] [--canvas 384x512] [--full] [--report]

    # the two rows of reports/bench_faces.md: competition-size canvases, and real photos of mixed sizes
    .venv/bin/python benchmarks/bench_faces.py --canvas 384x512 --report
    .venv/bin/python benchmarks/bench_faces.py --images ../shared/data/realmask-dev/eval/images --n 221 --report

All timings are on the same images in one run; ratios are against the naive loop as the teams ran it,
`MTCNN()(PIL image)` one image at a time (detection plus facenet's own face crop); `MTCNN().detect` alone is
timed too. `--canvas WxH` first composes every image into a photo of that size (JPEG q90, in a temporary folder):
the face unscaled at the top centre, over an enlarged copy of the image scrambled in 16 px blocks and blurred
(smooth, with no face in it). The competition's photos are 384x512 portraits; utkmask's are 200x200 face crops,
which leave the downscaling of the batched stage little to gain. `--full` also runs the batched stage once on
every image under --images and prints the detection rate per mask state (CPU heavy).
The crop cache is built in a temporary folder of symlinks (nothing is written next to the data).
Images of different sizes are letterboxed into shared canvases (`faces.canvas_groups`), each image searched as if alone.
"MTCNN networks alone" is the time the batched stage (1 thread) spent inside P-Net, R-Net and O-Net: the floor no
batching can go under. `--report` adds (or replaces) this run's row in reports/bench_faces.md.
"""
import argparse, json, os, shutil, sys, tempfile, time
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


def naive(files, threads=None, detect_only=False):
    "The teams' loop: `MTCNN()(PIL image)` one image at a time, full resolution (torch threads as set, or `threads`)."
    from facenet_pytorch import MTCNN
    m = MTCNN(device=faces.default_device())
    probs = []
    with faces.torch_threads(threads):
        for f in files:
            img = Image.open(f).convert("RGB")
            if detect_only:
                boxes, p = m.detect(img)
                probs.append(np.nan if boxes is None else float(np.max(p)))
            else:
                face, p = m(img, return_prob=True)  # the face crop (160 px, standardised) and its probability
                probs.append(np.nan if face is None else float(p))
    return np.array(probs)


def canvas_size(text):
    "'WxH' (argparse type) -> (W, H), each a multiple of 16."
    try: w, h = (int(v) for v in text.lower().split("x"))
    except ValueError: raise argparse.ArgumentTypeError(f"{text!r}: expected WxH, e.g. 384x512") from None
    if w % 16 or h % 16 or w <= 0 or h <= 0: raise argparse.ArgumentTypeError(f"{text!r}: W and H must be positive multiples of 16")
    return w, h


def paste_at(face_size, size):
    "Top-left corner of the face on the canvas: centred across, a fifth of the way down (a portrait)."
    return (size[0] - face_size[0]) // 2, max(0, size[1] // 5 - face_size[1] // 8)


def compose(files, size, out):
    "Each image as a photo of `size` (W, H, multiples of 16): at the top centre over its enlarged copy, scrambled in 16 px blocks and blurred."
    from PIL import ImageFilter
    W, H = size
    done = []
    for i, f in enumerate(files):
        face = Image.open(f).convert("RGB")
        blocks = np.asarray(face.resize((W, H), Image.BILINEAR)).reshape(H // 16, 16, W // 16, 16, 3)
        order = np.random.default_rng(i).permutation(blocks.shape[0] * blocks.shape[2])  # scrambled: no face in it
        blocks = blocks.transpose(0, 2, 1, 3, 4).reshape(-1, 16, 16, 3)[order].reshape(H // 16, W // 16, 16, 16, 3)
        canvas = Image.fromarray(np.ascontiguousarray(blocks.transpose(0, 2, 1, 3, 4).reshape(H, W, 3)))
        canvas = canvas.filter(ImageFilter.GaussianBlur(24))  # smooth, like the wall behind a person
        canvas.paste(face, paste_at(face.size, size))
        dst = out / f"{i:06d}_{f.parent.name}" / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(dst, quality=90)
        done.append(dst)
    return done


class net_time:
    "Context: seconds spent inside the MTCNN networks' layers (forward hooks on every leaf module)."
    def __init__(self, min_face_size):
        self.m, self.total, self.handles = faces._mtcnn(faces.default_device(), int(min_face_size), (0.6, 0.7, 0.7), 0.709), 0.0, []
    def __enter__(self):
        def pre(mod, inp): mod._t0 = time.perf_counter()
        def post(mod, inp, out): self.total += time.perf_counter() - mod._t0
        for net in (self.m.pnet, self.m.rnet, self.m.onet):
            for mod in net.modules():
                if not list(mod.children()): self.handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        return self
    def __exit__(self, *exc):
        for h in self.handles: h.remove()


REPORT = Path(__file__).resolve().parents[1] / "reports" / "bench_faces.md"


def write_report(row):
    "Add or replace `row` (keyed by its images) in REPORT's JSON block and rewrite the table."
    rows = {}
    if REPORT.exists():
        text = REPORT.read_text()
        if "<!-- rows" in text: rows = json.loads(text.split("<!-- rows")[1].split("-->")[0])
    rows[row["images"]] = row
    cols = [("images", "images"), ("sizes", "sizes"), ("naive 2 thr", "naive2"), ("naive 1 thr", "naive1"),
            ("batched 1 thr", "b1"), ("x naive 2 thr", "x_b1"), ("batched 2 thr", "b2"), ("x naive 2 thr ", "x_b2"),
            ("nets alone", "floor"), ("faces: batched / naive", "rates"), ("date", "date")]
    lines = ["# Face stage: batched MTCNN against the naive per-image loop", "",
             "`benchmarks/bench_faces.py ... --report` (images/s on this machine; ratios against the naive loop with torch's "
             "default threads, measured in the same run; 'nets alone' is the batched stage's time inside the three "
             "networks at 1 thread, as images/s: the floor; faces: share of images with a face, batched / naive).", "",
             "| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows.values(): lines.append("| " + " | ".join(str(r.get(k, "")) for _, k in cols) + " |")
    lines += ["", "<!-- rows", json.dumps(rows, indent=1), "-->", ""]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines))
    print(f"wrote {REPORT}")


def decode(files):
    for f in files: load_image(f)


def centre_crop(files, size=(256, 256)):
    for f in files:
        img = load_image(f)
        x1, y1, x2, y2, _ = faces.crop_box(dict(method="fallback", width=img.shape[1], height=img.shape[0]),
                                           aspect=size[0] / size[1])
        Image.fromarray(img[y1:y2, x1:x2]).resize(size, Image.BILINEAR)


def mask_state(path): return STATE.get(Path(path).stem, "wear")


def on_face(d, face=None):
    "Share of found boxes whose centre lies on the face: the image centre, or inside the pasted `face` (x1, y1, x2, y2)."
    d = d[d.method == "mtcnn"]
    if face is None:  # the tight utkmask faces hold the image centre (their boxes may pass the edges)
        w, h = d.width.astype(float) / 2, d.height.astype(float) / 2
        return f"boxes on the centre {100 * np.mean((d.x1 < w) & (d.x2 > w) & (d.y1 < h) & (d.y2 > h)):.1f}%"
    cx, cy = (d.x1 + d.x2) / 2, (d.y1 + d.y2) / 2
    x1, y1, x2, y2 = face
    return f"box centres on the pasted face {100 * np.mean((cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)):.1f}%"


def rates(found, prob):
    return f"any face {100 * np.mean(found):5.1f}%   prob>=0.9 {100 * np.mean(np.nan_to_num(prob) >= 0.9):5.1f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images to time (spread over the folder)")
    ap.add_argument("--images", default=DEFAULT, help="folder of images (searched recursively)")
    ap.add_argument("--detect-size", type=int, default=160)
    ap.add_argument("--min-face-size", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads of the batched stage (faces' default 1)")
    ap.add_argument("--skip-naive", action="store_true", help="skip the naive loop with torch's default threads")
    ap.add_argument("--canvas", type=canvas_size, default=None, help="WxH: compose each image into a photo of this size first")
    ap.add_argument("--full", action="store_true", help="also detect every image once: rate per mask state")
    ap.add_argument("--report", action="store_true", help="add this run's row to reports/bench_faces.md")
    a = ap.parse_args()
    import torch
    files = sample(a.images, a.n)
    n = len(files)
    scratch = Path(tempfile.mkdtemp(prefix="bench_faces_"))
    face_box = None
    if a.canvas:
        fw, fh = Image.open(files[0]).size
        files = compose(files, a.canvas, scratch / "canvas")
        x, y = paste_at((fw, fh), a.canvas)
        face_box = (x, y, x + fw, y + fh)
    h, w = load_image(files[0]).shape[:2]
    shapes = {load_image(f).shape[:2] for f in files}
    lo, hi = min(min(s) for s in shapes), max(max(s) for s in shapes)
    sizes = f"{w}x{h}" if len(shapes) == 1 else f"{len(shapes)} sizes, {lo}-{hi} px"
    print(f"{n} images ({sizes}) from {a.images}; device {faces.default_device()}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    kw = dict(batch_size=a.batch_size, detect_size=a.detect_size, min_face_size=a.min_face_size, threads=a.threads)
    faces.mtcnn_detect(np.zeros((1, 64, 64, 3), np.uint8), min_face_size=a.min_face_size)  # build the nets once
    r = {}
    timed("decode only (floor)", lambda: decode(files), n, r)
    timed("plain centre crop", lambda: centre_crop(files), n, r)
    nv = None if a.skip_naive else timed(f"naive loop ({torch.get_num_threads()} threads)", lambda: naive(files), n, r)
    nv1 = timed("naive loop (1 thread)", lambda: naive(files, threads=1), n, r)
    if not a.skip_naive: timed(f"naive .detect only ({torch.get_num_threads()} threads)", lambda: naive(files, detect_only=True), n, r)
    det = timed(f"batched detect_faces ({a.threads} thread{'s' * (a.threads > 1)})", lambda: faces.detect_faces(files, progress=False, **kw), n, r)
    with net_time(a.min_face_size) as nt: faces.detect_faces(files, progress=False, **(kw | dict(threads=1)))
    r["MTCNN networks alone (1 thread)"] = n / nt.total
    print(f"{'MTCNN networks alone (1 thread)':<34} {n / nt.total:9.1f} img/s  ({nt.total:6.2f} s inside P-Net, R-Net, O-Net)")
    if os.cpu_count() > 1 and a.threads == 1:
        timed(f"batched detect_faces ({os.cpu_count()} threads)",
              lambda: faces.detect_faces(files, progress=False, **(kw | dict(threads=os.cpu_count()))), n, r)
    tmp = scratch / "split"
    try:
        for i, f in enumerate(files):   # a split folder of symlinks, so the cache is not written next to the data
            link = tmp / "images" / f"{i:06d}_{f.parent.name}" / f.name
            link.parent.mkdir(parents=True, exist_ok=True); link.symlink_to(f.resolve())
        timed("build_crop_cache (cold: +crops)", lambda: faces.build_crop_cache(tmp, progress=False, **kw), n, r)
        timed("build_crop_cache (cached rerun)", lambda: faces.build_crop_cache(tmp, progress=False, **kw), n, r)
        t = faces.build_crop_cache(tmp, progress=False, **kw)
        timed("read cached crops (decode 256px)", lambda: decode(t.crop_path), n, r)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    n2 = [k for k in r if k.startswith("naive loop (") and "(1 thread)" not in k]
    print(f"{'':<34} {'vs naive ' + n2[0][12:-1] if n2 else '':>18} {'vs naive 1 thread':>18}")
    for k, v in r.items():
        print(f"{k:<34} {v / r[n2[0]] if n2 else float('nan'):17.2f}x {v / r['naive loop (1 thread)']:17.2f}x")
    print(f"cached rerun / decode floor: {r['build_crop_cache (cached rerun)'] / r['decode only (floor)']:.2f}x")
    print()
    found_b, prob_b = (det.method == "mtcnn").to_numpy(), det.prob.astype(float).to_numpy()
    print(f"detection batched: {rates(found_b, prob_b)}; {on_face(det, face_box)}")
    print(f"detection naive:   {rates(~np.isnan(nv1), nv1)}")
    print(f"agreement (any face): {100 * np.mean(found_b == ~np.isnan(nv1)):.1f}%")
    if nv is not None: print(f"naive default threads == naive 1 thread: {np.array_equal(np.isnan(nv), np.isnan(nv1))}")
    if a.report:
        n2k = n2[0] if n2 else "naive loop (1 thread)"
        b2 = f"batched detect_faces ({os.cpu_count()} threads)"
        label = "/".join(Path(a.images).resolve().parts[-3:]) + (f" on {a.canvas[0]}x{a.canvas[1]} canvases" if a.canvas else "")
        write_report(dict(images=f"{label} ({n})", sizes=sizes, naive2=round(r[n2k], 1), naive1=round(r["naive loop (1 thread)"], 1),
                          b1=round(r[f"batched detect_faces ({a.threads} thread{'s' * (a.threads > 1)})"], 1),
                          x_b1=f"{r[f'batched detect_faces ({a.threads} thread' + 's' * (a.threads > 1) + ')'] / r[n2k]:.1f}x",
                          b2=round(r.get(b2, float("nan")), 1), x_b2=f"{r.get(b2, float('nan')) / r[n2k]:.1f}x",
                          floor=round(r["MTCNN networks alone (1 thread)"], 1),
                          rates=f"{100 * np.mean(found_b):.1f}% / {100 * np.mean(~np.isnan(nv1)):.1f}%",
                          date=time.strftime("%Y-%m-%d")))
    if a.full:
        every = sample(a.images, 0)
        print(f"\nfull run: {len(every)} images")
        d = timed("batched detect_faces (full)", lambda: faces.detect_faces(every, **kw), len(every), {})
        d["mask_state"] = d.path.map(mask_state)
        d["face"] = d.method == "mtcnn"
        d["face_p90"] = d.face & (d.prob.astype(float) >= 0.9)
        print(d.groupby("mask_state")[["face", "face_p90"]].mean().mul(100).round(1).assign(n=d.groupby("mask_state").size()).to_string())
        print(f"all: any face {100 * d.face.mean():.1f}%, prob>=0.9 {100 * d.face_p90.mean():.1f}%, "
              f"{on_face(d)}, errors {(d.method == 'error').sum()}")


if __name__ == "__main__":
    main()
