"""Serving speed on this machine: video frames/s end to end, and folder throughput of the Predictor.

Video: 640x480 clips of demo faces (1 face, and 4 faces), decode -> detect -> crop -> classify -> draw -> encode, with
the classifier in PyTorch and in onnxruntime, detection on every frame and on every 3rd (ByteTrack carries the
boxes between). Folder: `Predictor.predict` on competition-size 384x512 photos (a demo face on a background), with
and without flip TTA, against one chunk (all photos read and cropped, then classified: no read-ahead). The model is EfficientNet-Lite0 (offline ImageNet weights) at 128 px, as a run would train it;
speed does not depend on the weights. Prints a table with the targets of the serving issue and the memory peak of
the video loop for two clip lengths (it must not grow with the length).

    .venv/bin/python benchmarks/bench_serve.py                 # the default table
    .venv/bin/python benchmarks/bench_serve.py --frames 150 --threads 2 --folder-images 200
"""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90, help="frames per clip (default 90)")
    ap.add_argument("--folder-images", type=int, default=160, help="photos for the folder throughput (default 160)")
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (default 2)")
    ap.add_argument("--img-size", type=int, default=128, help="classifier input (default 128)")
    ap.add_argument("--detect-size", type=int, default=160, help="short side of the detection copy (default: the runs' 160)")
    ap.add_argument("--report", action="store_true", help="write the table to reports/bench_serve.md")
    ap.add_argument("--memory", action="store_true", help="also measure the video loop's memory peak for 1x and 3x the frames (subprocesses)")
    ap.add_argument("--_memory_child", nargs=2, metavar=("CLIP", "MODEL"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def make_run(root: Path, img_size: int):
    "A run folder with an (untrained) offline-ImageNet Lite0 at `img_size`, as train_run would record it."
    import torch
    from maskkit.experiment import TrainParams
    from maskkit.models import build_model
    from maskkit.runs import Run
    p = TrainParams(backbone="tf_efficientnet_lite0", pretrained="offline", img_size=img_size, run_name="bench-serve")
    with Run.create("bench-serve", p.to_dict(), root=root, resume=False) as run:
        m = build_model("tf_efficientnet_lite0", pretrained="offline")
        torch.save({"model": m.state_dict()}, run.path / "model.pt")
    return run


def demo_faces(n):
    "`n` demo faces that MTCNN finds with p > 0.99 (RGB arrays)."
    from maskkit.data import default_data_root, load_image
    from maskkit.demo import ensure_demo_dataset
    from maskkit.faces import crop_faces
    ensure_demo_dataset(default_data_root(), verbose=False)
    photos = sorted((default_data_root() / "eval" / "images").iterdir())[:80]
    imgs = [load_image(p) for p in photos]
    t, _ = crop_faces(imgs)
    good = [imgs[i] for i in t.index[(t.face_method == "face") & (t.prob > 0.99)]]
    return (good * n)[:n]


def clip(path, faces, n_frames, size=(640, 480), fps=25):
    "A clip of `faces` (1 or 4, a grid) drifting over a background."
    import cv2
    from PIL import Image
    w, h = size
    k = len(faces)
    scale = 1.0 if k == 1 else 0.85
    fs = [np.asarray(Image.fromarray(f).resize((int(f.shape[1] * scale), int(f.shape[0] * scale)))) for f in faces]
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([90 + 60 * xx / w, 110 + 40 * yy / h, 130 - 50 * xx / w], -1).astype(np.uint8)
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for t in range(n_frames):
        fr = bg.copy()
        for i, f in enumerate(fs):
            gx, gy = (i % 2, i // 2) if k > 1 else (0, 0)
            x = (40 if k > 1 else (w - f.shape[1]) // 2 - 60) + gx * (f.shape[1] + 60) + int(20 * np.sin(t / 10 + i))
            y = ((h - f.shape[0]) // 2 if k == 1 else 5 + gy * (f.shape[0] + 5))
            fr[y:y + f.shape[0], x:x + f.shape[1]] = f
        wr.write(np.ascontiguousarray(fr[..., ::-1]))
    wr.release()
    return path


def photos(folder: Path, faces, n, hw=(512, 384)):
    "`n` competition-size photos: a demo face on a background."
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        f = faces[i % len(faces)]
        bg = rng.integers(60, 200, (*hw, 3), dtype=np.uint8)
        y, x = (hw[0] - f.shape[0]) // 2, (hw[1] - f.shape[1]) // 2
        bg[y:y + f.shape[0], x:x + f.shape[1]] = f
        Image.fromarray(bg).save(folder / f"{i:04d}.jpg", quality=92)
    return folder


def main(argv=None):
    a = parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from maskkit.export import export_onnx
    from maskkit.inference import Predictor
    from maskkit.video import annotate_video
    if a._memory_child:
        pred = Predictor.from_onnx(a._memory_child[1], threads=a.threads)
        r = annotate_video(a._memory_child[0], pred, out=str(Path(a._memory_child[0]).with_suffix(".out.mp4")), progress=False)
        print(json.dumps({"frames": r.n_frames, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.environ.setdefault("MASKKIT_CACHE", str(tmp / "cache"))
    run = make_run(tmp / "runs", a.img_size)
    onnx = tmp / "model.onnx"
    parity = export_onnx(run, onnx)["parity"]["max_abs_diff"]
    faces = demo_faces(4)
    clips = {1: clip(tmp / "one.mp4", faces[:1], a.frames), 4: clip(tmp / "four.mp4", faces, a.frames)}
    backends = {"torch": lambda: Predictor.from_run(run, threads=a.threads), "onnxruntime": lambda: Predictor.from_onnx(onnx, threads=a.threads)}
    rows = []
    for n_faces, path in clips.items():
        for every in (1, 3):
            for name, make in backends.items():
                pred = make()
                annotate_video(path, pred, max_frames=5, progress=False, detect_size=a.detect_size)   # warm-up
                t0 = time.perf_counter()
                r = annotate_video(path, pred, out=tmp / f"o_{n_faces}_{every}_{name}.mp4", detect_every=every, progress=False,
                                   detect_size=a.detect_size)
                fps = r.n_frames / (time.perf_counter() - t0)
                found = r.frames.dropna(subset=["class"]).groupby("frame").size().mean()
                rows.append({"test": f"video 640x480, {n_faces} face{'s' * (n_faces > 1)}, detect every {every}", "backend": name,
                             "value": fps, "unit": "frames/s", "faces/frame": found,
                             "target": 30 if n_faces == 1 else 15})
    folder = photos(tmp / "photos", faces, a.folder_images)
    for tta, chunk in (("none", None), ("none", 10**9), ("hflip", None)):
        for name, make in backends.items():
            if name == "onnxruntime" and tta == "hflip": continue   # an export holds the run's own TTA (none here)
            pred = make()
            if chunk: pred.chunk_size = chunk   # the baseline: everything read and cropped, then classified
            pred.predict(sorted(folder.iterdir())[:8], tta=tta)
            t0 = time.perf_counter()
            out = pred.predict(folder, tta=tta)
            how = ", one chunk (no read-ahead)" if chunk else ""
            rows.append({"test": f"folder of 384x512 photos, TTA {tta}{how}", "backend": name, "value": len(out) / (time.perf_counter() - t0),
                         "unit": "images/s", "faces/frame": (out.face_method == "face").mean(), "target": 100 if tta == "none" and not chunk else None})
    head = (f"threads {a.threads}, classifier Lite0 at {a.img_size} px, detection copy {a.detect_size} px short side, "
            f"{a.frames} frames per clip, {a.folder_images} photos; ONNX parity (max |p_torch - p_onnx|): {parity:.2e}")
    print(head)
    print(f"{'test':<62} {'backend':<12} {'value':>8} {'unit':<9} {'target':>7} {'met':>4} {'faces':>6}")
    md = ["# Serving speed", "", f"`benchmarks/bench_serve.py --report`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores; {head}.", "",
          "| test | backend | value | unit | target | met | faces per frame/photo |", "|---|---|---:|---|---:|---|---:|"]
    for r in rows:
        met = "" if r["target"] is None else ("yes" if r["value"] >= r["target"] else "no")
        print(f"{r['test']:<62} {r['backend']:<12} {r['value']:>8.1f} {r['unit']:<9} {r['target'] or '':>7} {met:>4} {r['faces/frame']:>6.2f}")
        md.append(f"| {r['test']} | {r['backend']} | {r['value']:.1f} | {r['unit']} | {r['target'] or ''} | {met} | {r['faces/frame']:.2f} |")
    torch_1 = next(r["value"] for r in rows if r["test"].startswith("video 640x480, 1 face, detect every 1") and r["backend"] == "torch")
    onnx_1 = next(r["value"] for r in rows if r["test"].startswith("video 640x480, 1 face, detect every 1") and r["backend"] == "onnxruntime")
    print(f"onnxruntime / torch, 1 face every frame: {onnx_1 / torch_1:.2f}x")
    md.append(f"\nonnxruntime / torch, 1 face, detection every frame: {onnx_1 / torch_1:.2f}x.")
    for name in backends:
        get = lambda t: next(r["value"] for r in rows if r["test"] == t and r["backend"] == name)
        ratio = get('folder of 384x512 photos, TTA none') / get('folder of 384x512 photos, TTA none, one chunk (no read-ahead)')
        print(f"folder, {name}: chunks read ahead / one chunk: {ratio:.2f}x")
        md.append(f"\nFolder, {name}: chunks read ahead / one chunk {ratio:.2f}x.")
    if a.memory:
        for mult in (1, 3):
            c = clip(tmp / f"mem{mult}.mp4", faces[:1], a.frames * mult)
            r = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--_memory_child", str(c), str(onnx)],
                               capture_output=True, text=True, timeout=1800)
            line = r.stdout.strip().splitlines()[-1] if r.returncode == 0 else r.stderr[-500:]
            print("memory peak of the video loop:", line)
            md.append(f"\nMemory peak of the video loop ({mult}x the frames, a subprocess): `{line}`")
    if a.report:
        out = Path(__file__).resolve().parents[1] / "reports" / "bench_serve.md"
        out.write_text("\n".join(md) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
