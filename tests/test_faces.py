"Behaviour of maskkit.faces: detection, the face rule, the crop policy and the crop cache."
import os, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
import skimage.data

from maskkit import faces
from maskkit.data import DataError


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def astro():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def real_detections(astro, tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    paths = [_save(d / "astronaut.jpg", astro), _save(d / "blank.png", np.full((300, 240, 3), 180, np.uint8))]
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    paths.append(d / "broken.jpg")
    return faces.detect_faces(paths, progress=False)


def test_astronaut_face_found(real_detections):
    a = real_detections.iloc[0]
    assert a.method == "mtcnn" and a.prob > 0.9
    # checked by eye on the 512x512 image: the face spans about x 180-268, y 60-172, eyes near (205, 102), (247, 104)
    assert a.x1 < 200 and a.x2 > 252 and a.y1 < 95 and a.y2 > 110, a          # the eyes region is inside the box
    assert 150 < a.x1 and a.x2 < 300 and 20 < a.y1 and a.y2 < 210, a          # and the box is on the head
    assert 195 < a.lx0 < 215 and 237 < a.lx1 < 257 and 92 < a.ly0 < 112        # eye landmarks
    assert (a.width, a.height) == (512, 512)


def test_detection_leaves_torch_threads(tmp_path):
    import torch
    before = torch.get_num_threads()
    faces.detect_faces([_save(tmp_path / "b.png", np.zeros((60, 60, 3), np.uint8))], threads=1, device="cpu", progress=False)
    assert torch.get_num_threads() == before


def test_full_resolution_coordinates(astro, tmp_path):
    "Detection on a downscaled copy maps back: the box on a 2x image is twice the box on the original."
    big = np.asarray(Image.fromarray(astro).resize((1024, 1024), Image.BILINEAR))
    det = faces.detect_faces([_save(tmp_path / "a.png", astro), _save(tmp_path / "big.png", big)], progress=False)
    one, two = det.iloc[0], det.iloc[1]
    for k in ("x1", "y1", "x2", "y2", "lx2", "ly2"):
        assert abs(two[k] - 2 * one[k]) < 0.06 * 1024, (k, one[k], two[k])


def test_blank_falls_back_and_corrupt_reported(real_detections):
    blank, broken = real_detections.iloc[1], real_detections.iloc[2]
    assert blank.method == "fallback" and pd.isna(blank.x1) and pd.isna(blank.error)
    assert broken.method == "error" and broken.path.endswith("broken.jpg")
    assert isinstance(broken.error, str) and broken.error
    assert len(real_detections) == 3   # nothing vanished
    x1, y1, x2, y2, m = faces.crop_box(blank.to_dict(), aspect=1.0)
    assert m == "fallback" and 0 <= x1 < x2 <= 240 and 0 <= y1 < y2 <= 300


def test_pick_face_rule():
    boxes = np.array([[0, 0, 40, 40], [90, 90, 130, 130], [170, 170, 200, 200]], float)
    assert faces.pick_face(boxes, [0.999, 0.98, 0.999], 220, 220) == 1          # centre wins over slightly surer
    assert faces.pick_face(boxes, [0.999, 0.40, 0.999], 220, 220) in (0, 2)     # a weak centre box loses
    assert faces.pick_face(boxes, [0.9, 0.95, 0.999], 220, 220, centre_weight=0) == 2
    assert faces.pick_face(np.zeros((0, 4)), [], 10, 10) is None


def test_several_faces_keeps_centre_one(tmp_path):
    "Through detect_faces: of two sure faces the one nearer the centre is kept, its landmarks with it."
    def two_faces(batch):
        b = np.array([[5, 5, 25, 25], [40, 45, 60, 70]], np.float32)
        pts = np.stack([np.full((5, 2), 15, np.float32), np.full((5, 2), 50, np.float32)])
        return [(b, np.array([0.999, 0.99], np.float32), pts)] * len(batch)
    p = _save(tmp_path / "x.png", np.zeros((100, 100, 3), np.uint8))
    r = faces.detect_faces([p], detector=two_faces, detect_size=None, progress=False).iloc[0]
    assert (r.x1, r.y2, r.lx0, r.n_faces) == (40, 70, 50, 2)


@pytest.mark.parametrize("aspect", [1.0, 0.75, 4 / 3])
def test_crop_box_aspect_and_clamp(aspect):
    det = dict(method="mtcnn", prob=0.99, x1=300, y1=10, x2=380, y2=110, width=384, height=512)
    x1, y1, x2, y2, m = faces.crop_box(det, margin=0.3, aspect=aspect)
    assert m == "face" and 0 <= x1 < x2 <= 384 and 0 <= y1 < y2 <= 512
    assert abs((x2 - x1) / (y2 - y1) - aspect) < 0.02
    assert x1 <= 300 and y1 <= 10 and x2 >= 380 and y2 >= 110    # the face stays inside
    huge = dict(det, x1=-50, y1=-50, x2=450, y2=600)               # grown box larger than the image
    x1, y1, x2, y2, _ = faces.crop_box(huge, aspect=aspect)
    assert 0 <= x1 < x2 <= 384 and 0 <= y1 < y2 <= 512 and abs((x2 - x1) / (y2 - y1) - aspect) < 0.02
    assert faces.crop_box(dict(det, prob=0.5), min_prob=0.9)[-1] == "fallback"
    assert faces.crop_box(dict(det, prob=0.5), min_prob=0.4)[-1] == "face"


class CountingDetector:
    "A fake detector: one centred face per image; remembers how many images it saw."
    def __init__(self, fail_after=None): self.calls, self.images, self.fail_after = 0, 0, fail_after
    def __call__(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after: raise KeyboardInterrupt
        self.calls += 1; self.images += len(batch)
        h, w = batch.shape[1:3]
        box = np.array([[w * 0.3, h * 0.3, w * 0.7, h * 0.7]], np.float32)
        return [(box, np.array([0.99], np.float32), np.full((1, 5, 2), w / 2, np.float32))] * len(batch)


def _dataset(root, n_persons=3):
    rng = np.random.default_rng(0)
    for s in ("train", "eval"):
        for i in range(n_persons):
            for stem in ("mask1", "normal"):
                _save(root / s / "images" / f"{i:06d}_male_Asian_30" / f"{stem}.jpg", rng.integers(0, 255, (64, 48, 3), np.uint8))
    return root


def test_cache_hit_and_invalidation(tmp_path):
    root = _dataset(tmp_path / "ds")
    det = CountingDetector()
    t = faces.build_crop_cache(root / "train", size=(32, 32), detector=det, batch_size=4, progress=False)
    assert det.images == 6 and len(t) == 6 and t.crop_path.map(lambda p: Path(p).exists()).all()
    assert Image.open(t.crop_path[0]).size == (32, 32)
    assert (faces.crop_dir(root / "train", (32, 32)) / "000000_male_Asian_30" / "mask1.jpg.jpg").exists()
    det2 = CountingDetector()
    faces.build_crop_cache(root / "train", size=(32, 32), detector=det2, progress=False)
    assert det2.images == 0                                      # rerun: nothing detected
    f = root / "train" / "images" / "000001_male_Asian_30" / "normal.jpg"
    _save(f, np.zeros((80, 60, 3), np.uint8)); os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    t3 = faces.build_crop_cache(root / "train", size=(32, 32), detector=det2, progress=False)
    assert det2.images == 1                                      # only the changed file redone
    row = t3[t3.rel.str.endswith("000001_male_Asian_30/normal.jpg")].iloc[0]
    assert row.crop_x2 <= 60 and row.crop_y2 <= 80               # cropped from the new 60x80 image
    det4 = CountingDetector()
    faces.build_crop_cache(root / "train", size=(16, 24), detector=det4, progress=False)
    assert det4.images == 0 and Image.open(next(faces.crop_dir(root / "train", (16, 24)).rglob("*.jpg"))).size == (24, 16)   # size is (H, W); PIL's is (W, H)
    t5 = faces.build_crop_cache(root, size=(32, 32), detector=det4, progress=False)   # dataset root: both splits
    assert det4.images == 6 and len(t5) == 12


def test_same_stem_other_extension_gets_its_own_crop(tmp_path):
    "x.jpg, x.jpeg and x.JPG are three pictures: three crops, each of its own source."
    d = tmp_path / "eval" / "images"
    for i, ext in enumerate(("jpg", "jpeg", "JPG")): _save(d / f"x.{ext}", np.full((64, 48, 3), 60 * (i + 1), np.uint8))
    t = faces.build_crop_cache(tmp_path / "eval", size=(32, 32), detector=CountingDetector(), progress=False)
    assert t.crop_path.nunique() == 3
    means = [np.asarray(Image.open(p)).mean() for p in t.sort_values("rel").crop_path]
    assert len({round(m) for m in means}) == 3


class FailingOn:
    "A detector that raises on images of one brightness (identity fixed, so the cache key does not change)."
    identity = "test-detector"
    def __init__(self, bad_value=None): self.images, self.bad = 0, bad_value
    def __call__(self, batch):
        if self.bad is not None and (batch.reshape(len(batch), -1).mean(1).round() == self.bad).any(): raise RuntimeError("boom")
        self.images += len(batch)
        return CountingDetector()(batch)


def test_detector_failures_are_kept_and_retried(tmp_path):
    d = tmp_path / "eval" / "images"
    for i in range(3): _save(d / f"{i}.png", np.full((64, 48, 3), 50 * (i + 1), np.uint8))
    with pytest.warns(UserWarning, match="face detection failed"):
        t = faces.build_crop_cache(tmp_path / "eval", size=(32, 32), detector=FailingOn(bad_value=100), progress=False)
    det = faces.load_detections(tmp_path / "eval").set_index("rel")
    assert "boom" in det.error["images/1.png"] and det.method["images/1.png"] == "fallback" and det.error.isna().sum() == 2
    assert t.set_index("rel").face_method["images/1.png"] == "fallback"          # the run goes on with the fallback crop
    ok = FailingOn()
    t2 = faces.build_crop_cache(tmp_path / "eval", size=(32, 32), detector=ok, progress=False)
    assert ok.images == 1 and t2.set_index("rel").face_method["images/1.png"] == "face"   # only the failed image retried
    other = CountingDetector()                                                     # another detector: detected again
    faces.build_crop_cache(tmp_path / "eval", size=(32, 32), detector=other, progress=False)
    assert other.images == 3


def test_only_the_rows_in_use_are_detected(tmp_path):
    root = _dataset(tmp_path / "ds", n_persons=4)
    det = CountingDetector()
    some = sorted((root / "train" / "images").rglob("*.jpg"))[:3]
    t = faces.build_crop_cache(root / "train", size=(32, 32), detector=det, only=some, progress=False)
    assert det.images == 3 and len(t) == 3
    t2 = faces.build_crop_cache(root / "train", size=(32, 32), detector=det, progress=False)   # the rest, the 3 kept
    assert det.images == 8 and len(t2) == 8


def test_interrupted_run_resumes(tmp_path):
    root = _dataset(tmp_path / "ds", n_persons=4)
    with pytest.raises(KeyboardInterrupt):
        faces.build_crop_cache(root / "train", size=(32, 32), detector=CountingDetector(fail_after=2), batch_size=2,
                               flush_every=0, num_workers=1, progress=False)
    assert len(faces.load_detections(root / "train")) == 4       # the two finished batches were kept
    det = CountingDetector()
    faces.build_crop_cache(root / "train", size=(32, 32), detector=det, batch_size=2, progress=False)
    assert det.images == 4


def test_corrupt_file_in_cache_and_with_crops(tmp_path):
    from maskkit.data import load_eval
    root = _dataset(tmp_path / "ds")
    pd.DataFrame(dict(ImageID=["a.jpg", "b.jpg"], ans=0)).to_csv(root / "eval" / "info.csv", index=False)
    _save(root / "eval" / "images" / "a.jpg", np.zeros((50, 40, 3), np.uint8))
    (root / "eval" / "images" / "b.jpg").write_bytes(b"garbage")
    det = CountingDetector()
    t = faces.build_crop_cache(root / "eval", size=(32, 32), detector=det, progress=False)   # the run goes on
    bad = t[t.rel == "images/b.jpg"].iloc[0]
    assert bad.face_method == "error" and pd.isna(bad.crop_path) and "b.jpg" not in bad.error and bad.error
    assert (t.face_method != "error").sum() == len(t) - 1
    df = load_eval(root)
    ok = faces.with_crops(df[df.ImageID == "a.jpg"], size=(32, 32), detector=det)
    assert Path(ok.crop_path.iloc[0]).exists() and ok.face_method.iloc[0] == "face"
    with pytest.raises(DataError, match="b.jpg"):
        faces.with_crops(df, size=(32, 32), detector=det)


def test_with_crops_needs_cache_when_not_building(tmp_path):
    root = _dataset(tmp_path / "ds")
    df = pd.DataFrame(dict(path=[str(p) for p in sorted((root / "train" / "images").rglob("*.jpg"))]))
    with pytest.raises(DataError, match="build_crop_cache"):
        faces.with_crops(df, size=(32, 32), build=False)
    out = faces.with_crops(df, size=(32, 32), detector=CountingDetector())
    assert list(out.path) == list(df.path) and out.crop_path.map(lambda p: Path(p).exists()).all()
    again = faces.with_crops(df, size=(32, 32), build=False)
    assert list(again.crop_path) == list(out.crop_path)


def test_symlinked_images(tmp_path):
    "A split made of symlinks keeps its crops with the links' split, not with the targets'."
    src = _dataset(tmp_path / "src")
    links = tmp_path / "links" / "images" / "p"
    links.mkdir(parents=True)
    for f in sorted((src / "train" / "images").rglob("*.jpg"))[:3]: (links / f"{f.parent.name}_{f.name}").symlink_to(f)
    df = pd.DataFrame(dict(path=[str(p) for p in sorted(links.iterdir())]))
    out = faces.with_crops(df, size=(32, 32), detector=CountingDetector())
    assert all(p.startswith(str(faces.crop_dir(tmp_path / "links", (32, 32)))) for p in out.crop_path)
    assert not faces.crop_dir(src / "train", (32, 32)).exists()


def test_cache_location(tmp_path, monkeypatch):
    "Data inside the project keeps its cache beside the images; data elsewhere is never written to."
    from maskkit.data import project_root
    monkeypatch.delenv("MASKKIT_CACHE")
    inside = project_root() / "data" / "demo" / "train"
    assert faces.cache_dir(inside) == inside
    outside = faces.cache_dir(tmp_path / "ds" / "train")
    assert outside.parent == project_root() / "data" / "cache" and outside.name.startswith("ds_train_")
    monkeypatch.setenv("MASKKIT_CACHE", str(tmp_path / "c"))
    root = _dataset(tmp_path / "ds2")
    before = sorted(p.name for p in (root / "train").iterdir())
    faces.build_crop_cache(root / "train", size=(32, 32), detector=CountingDetector(), progress=False)
    assert sorted(p.name for p in (root / "train").iterdir()) == before          # nothing written in the dataset
    assert (faces.cache_dir(root / "train") / "faces.parquet").exists()
    assert faces.cache_dir(root / "train").parent == tmp_path / "c"
