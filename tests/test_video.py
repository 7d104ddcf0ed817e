"Serving: ONNX export with its parity check, and `maskkit video` on a short synthetic clip of demo faces."
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnxruntime"); pytest.importorskip("trackers")

from maskkit import TrainParams, train_run, Predictor
from maskkit.data import DataError, load_image, project_root
from maskkit.demo import ensure_demo_dataset
from maskkit.faces import crop_faces
from maskkit.labels import PROB_COLS
from maskkit.video import annotate_video, open_video, synthetic_video

DEMO = project_root() / "data" / "demo"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "A tiny run, its ONNX export, and a 40-frame clip: one person throughout, one entering at frame 10 and leaving at 30."
    ensure_demo_dataset(DEMO, verbose=False)
    base = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKKIT_CACHE", str(base / "cache")); mp.setenv("MASKKIT_REPORTS", str(base / "reports"))
        run = train_run(TrainParams(limit=12, epochs=1, img_size=64, tta="hflip", num_threads=1, run_name="serve"), verbose=False)
        from maskkit.export import export_onnx
        meta = export_onnx(run, base / "model.onnx")
        photos = sorted((DEMO / "eval" / "images").iterdir())[:60]
        table, _ = crop_faces([load_image(p) for p in photos])
        good = [photos[i] for i in table.index[(table.face_method == "face") & (table.prob > 0.99)]][:2]
        clip = synthetic_video(base / "street.mp4", [load_image(p) for p in good])
        yield {"base": base, "run": run, "onnx": base / "model.onnx", "meta": meta, "clip": clip}


def _frames(path):
    cap = cv2.VideoCapture(str(path)); out = []
    while True:
        ok, f = cap.read()
        if not ok: break
        out.append(np.ascontiguousarray(f[..., ::-1]))
    cap.release()
    return out


def test_export_parity_and_the_onnx_predictor(served):
    assert served["meta"]["parity"]["max_abs_diff"] <= 1e-4 and served["meta"]["input"]["dtype"] == "uint8"
    photos = sorted((DEMO / "eval" / "images").iterdir())[:24]
    a, b = Predictor.from_run(served["run"]).predict(photos), Predictor.from_onnx(served["onnx"]).predict(photos)
    assert np.abs(a[PROB_COLS].to_numpy() - b[PROB_COLS].to_numpy()).max() <= 1e-4 and (a["class"] == b["class"]).all()
    assert (a.face_method == b.face_method).all()


def test_export_refuses_a_graph_that_differs(served, tmp_path, monkeypatch):
    import maskkit.export as E
    real = E.onnx_session
    class Off:
        def __init__(self, s): self.s = s
        def run(self, names, feeds): return [self.s.run(names, feeds)[0] + 1e-3]
    monkeypatch.setattr(E, "onnx_session", lambda p, threads=None: Off(real(p, threads)))
    with pytest.raises(ValueError, match="differ"): E.export_onnx(served["run"], tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_maskkit_video_on_a_synthetic_clip(served, tmp_path):
    out, csv = tmp_path / "out.mp4", tmp_path / "out.csv"
    r = subprocess.run([sys.executable, "-m", "maskkit.cli", "video", served["clip"]["path"], "--run", str(served["run"].path),
                        "--out", str(out), "--csv", str(csv)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    cap = cv2.VideoCapture(str(out))
    assert (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (40, 640, 480)
    cap.release()
    rows = pd.read_csv(csv)
    tracks = pd.read_csv(tmp_path / "out_tracks.csv")
    people = tracks[tracks.frames_classified >= 3]
    assert len(people) == 2 and summary["tracks"] >= 2 and sum(summary["people"].values()) == 2   # one track per person
    long, short = people.sort_values("frames_classified", ascending=False).itertuples()
    assert long.first_frame == 0 and long.last_frame == 39 and 9 <= short.first_frame <= 11 and 28 <= short.last_frame <= 30
    # the per-frame classes equal the Predictor's on the same frames (the frames with one person in view)
    frames = _frames(served["clip"]["path"])
    single = [k for k in range(40) if (rows.frame == k).sum() == 1 and rows.track_id[rows.frame == k].notna().all()]
    assert len(single) >= 15
    pred = Predictor.from_run(served["run"]).predict([frames[k] for k in single])
    got = rows.set_index("frame").loc[single]
    assert (got["class"].to_numpy() == pred["class"].to_numpy()).all()
    assert np.abs(got[PROB_COLS].to_numpy() - pred[PROB_COLS].to_numpy()).max() < 1e-5


def test_onnx_and_torch_video_agree(served, tmp_path):
    a = annotate_video(served["clip"]["path"], Predictor.from_run(served["run"]), progress=False)
    b = annotate_video(served["clip"]["path"], Predictor.from_onnx(served["onnx"]), progress=False)
    fa, fb = a.frames.dropna(subset=["class"]), b.frames.dropna(subset=["class"])
    assert len(fa) == len(fb) and (fa["class"].to_numpy() == fb["class"].to_numpy()).all()
    assert np.abs(fa[PROB_COLS].to_numpy() - fb[PROB_COLS].to_numpy()).max() <= 1e-4


def test_detect_every_third_frame_carries_the_boxes(served):
    r = annotate_video(served["clip"]["path"], Predictor.from_run(served["run"]), detect_every=3, progress=False)
    faces = r.frames.dropna(subset=["class"])
    assert faces.detected.sum() < len(faces) and set(faces.frame[faces.detected]) <= set(range(0, 40, 3))
    assert len(r.tracks[r.tracks.frames_classified >= 3]) == 2


def test_bad_video_inputs(served, tmp_path):
    p = Predictor.from_run(served["run"])
    with pytest.raises(DataError, match="not found"): open_video(tmp_path / "nope.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"no video here" * 200)
    with pytest.raises(DataError, match="junk.mp4"): annotate_video(tmp_path / "junk.mp4", p)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="empty.mp4"): annotate_video(tmp_path / "empty.mp4", p)
    with pytest.raises(DataError, match="camera index"): open_video(97)
    # a frame of another size in the middle, frames without a face: rows say so, the output is whole
    w = cv2.VideoWriter(str(tmp_path / "mixed.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    frames = _frames(served["clip"]["path"])[:6]
    for k, f in enumerate(frames):
        img = cv2.resize(f, (320, 240))[..., ::-1] if k != 3 else np.zeros((240, 320, 3), np.uint8)
        w.write(np.ascontiguousarray(img))
    w.release()
    r = annotate_video(tmp_path / "mixed.avi", p, out=tmp_path / "mixed_out.mp4", progress=False)
    assert r.n_frames == 6 and "no face" in set(r.frames.note.dropna())
    cap = cv2.VideoCapture(str(tmp_path / "mixed_out.mp4")); assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6; cap.release()


def test_an_interrupted_loop_leaves_a_playable_video(served, tmp_path, monkeypatch):
    import maskkit.video as V
    real, calls = V.frame_faces, {"n": 0}
    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(V, "frame_faces", boom)
    r = annotate_video(served["clip"]["path"], Predictor.from_run(served["run"]), out=tmp_path / "cut.mp4", progress=False)
    assert r.ended.startswith("interrupted") and r.n_frames == 7
    cap = cv2.VideoCapture(str(tmp_path / "cut.mp4")); ok, f = cap.read()
    assert ok and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7; cap.release()
