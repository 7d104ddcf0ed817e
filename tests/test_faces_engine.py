"The batched MTCNN engine of maskkit.faces: same faces as facenet-pytorch, independent of the batch."
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
import skimage.data

from maskkit import faces

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkmask" / "train" / "images"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "realmask-dev" / "eval" / "images"


def tight_crops(size=128):
    "Face photos where the face fills the frame (its boxes pass the edges), as in utkmask, plus a blank one."
    a = skimage.data.astronaut()
    crops = [a[y:y + h, x:x + h] for y, x, h in [(70, 150, 160), (50, 170, 130), (40, 140, 200), (60, 160, 120)]]
    crops += [c[:, ::-1] for c in crops[:2]]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((size, size), Image.BILINEAR)) for c in crops]
    return np.stack(out + [np.full((size, size, 3), 150, np.uint8)])


def shared_sample(n=32, size=160):
    files = sorted(SHARED.rglob("*.jpg"))
    if not files: pytest.skip("../shared/data/utkmask is not here")
    files = [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files])


def same(p, q, tol=0.05):
    return (len(p[0]) == len(q[0]) and np.allclose(p[0], q[0], atol=tol) and np.allclose(p[1], q[1], atol=1e-5)
            and np.allclose(p[2], q[2], atol=tol))


@pytest.mark.parametrize("images", [tight_crops, shared_sample], ids=["astronaut", "utkmask"])
def test_batch_gives_the_faces_of_one_image_at_a_time(images):
    x = images()
    batched = faces.mtcnn_detect(x, min_face_size=20)
    single = [faces.mtcnn_detect(x[i:i + 1], min_face_size=20)[0] for i in range(len(x))]
    assert all(same(b, s) for b, s in zip(batched, single))
    assert sum(len(b[0]) > 0 for b in batched) >= len(x) // 2  # faces were found: the check is not vacuous


@pytest.mark.parametrize("images", [tight_crops, shared_sample], ids=["astronaut", "utkmask"])
def test_same_faces_as_facenet(images):
    "One image at a time, facenet's own `detect` finds the same faces with the same probabilities and boxes."
    x = images()
    ours = [faces.mtcnn_detect(x[i:i + 1], min_face_size=20)[0] for i in range(len(x))]
    theirs = [faces.mtcnn_detect(x[i:i + 1], min_face_size=20, engine="facenet")[0] for i in range(len(x))]
    assert all(len(o[0]) == len(t[0]) and np.allclose(o[1], t[1], atol=1e-5) for o, t in zip(ours, theirs))
    # boxes differ only where facenet's unstable sort breaks a tie between equally sure (p = 1.0) boxes
    assert np.mean([same(o, t) for o, t in zip(ours, theirs)]) >= 0.8


def test_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match="engine"):
        faces.mtcnn_detect(tight_crops()[:1], engine="dlib")


@pytest.mark.parametrize("size", [24, 48, (7, 13)])
def test_area_crops_equal_interpolate_area(size):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, 40, 50, 3), generator=g, dtype=torch.uint8)
    sat = faces.summed_area(imgs)
    boxes = [(0, 0, 40, 0, 50), (1, 5, 9, 7, 30), (2, 10, 11, 20, 21), (1, 0, 40, 49, 50), (2, 3, 39, 2, 45)]
    b, y0, y1, x0, x1 = (torch.tensor(v) for v in zip(*boxes))
    got = faces.area_crops(sat, b, y0, y1, x0, x1, size)
    ref = torch.cat([F.interpolate(imgs[k, r0:r1, c0:c1].permute(2, 0, 1)[None].float(), size=size, mode="area")
                     for k, r0, r1, c0, c1 in boxes])
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-3)


def test_summed_area_exact_for_large_images():
    x = torch.full((1, 300, 300, 3), 255, dtype=torch.uint8)  # sums past 2**24: float32 would round
    sat = faces.summed_area(x)
    assert sat.dtype == torch.float64 and sat[0, -1, -1, 0].item() == 300 * 300 * 255


@pytest.mark.parametrize("method", ["union", "min"])
def test_nms_keeps_images_apart_with_negative_boxes(method):
    "A box of image 1 hanging off the top-left must not suppress image 0's face (facenet's offset trick does)."
    boxes = torch.tensor([[0, 0, 100, 100], [-90, -90, 10, 10], [5, 5, 100, 100.]])
    scores = torch.tensor([0.9, 0.95, 0.8])
    keep = faces.nms_per_image(boxes, scores, torch.tensor([0, 1, 0]), 0.5, method=method).tolist()
    assert sorted(keep) == [0, 1]  # box 2 overlaps box 0 of its own image and goes
    shifted = boxes + torch.tensor([0, 1, 0])[:, None] * (boxes.max() + 1)  # the trick facenet relies on
    from torchvision.ops import nms
    assert sorted(nms(shifted, scores, 0.5).tolist()) == [1]  # it would lose image 0's face


def test_nms_min_is_overlap_over_smaller_box():
    boxes = torch.tensor([[0, 0, 99, 99], [10, 10, 59, 59.]])  # the small box lies inside the big one
    scores = torch.tensor([0.9, 0.8])
    assert faces.nms_per_image(boxes, scores, torch.zeros(2, dtype=torch.long), 0.7, method="min").tolist() == [0]
    assert faces.nms_per_image(boxes, scores, torch.zeros(2, dtype=torch.long), 0.7).tolist() == [0, 1]  # IoU 0.25


@pytest.mark.parametrize("method", ["union", "min"])
def test_nms_ties_keep_the_first_box(method):
    "Saturated probabilities tie; of overlapping tied boxes the first one wins (a stable order, as alone)."
    scores = np.concatenate([np.full(30, 0.5), np.ones(30)]).astype(np.float32)
    np.random.default_rng(0).shuffle(scores)  # an unstable sort puts a later 1.0 first here
    boxes = torch.tensor([[10, 10, 90, 90.]]).repeat(60, 1) + torch.linspace(0, 3, 60)[:, None]
    keep = faces.nms_per_image(boxes, torch.from_numpy(scores), torch.zeros(60, dtype=torch.long), 0.5, method=method)
    assert keep.tolist() == [int(np.flatnonzero(scores == 1)[0])]


def test_memory_budget_splits_batches_with_the_same_faces(monkeypatch):
    x = tight_crops()
    whole = faces.mtcnn_detect(x, min_face_size=20)
    calls = []
    real = faces._detect_batch
    monkeypatch.setattr(faces, "_detect_batch", lambda m, imgs, sizes=None: calls.append(len(imgs)) or real(m, imgs, sizes))
    monkeypatch.setattr(faces, "SAT_BUDGET", x[0].size * 8 * 2)  # room for two images per table
    split = faces.mtcnn_detect(x, min_face_size=20)
    assert calls == [2, 2, 2, 1] and all(same(a, b) for a, b in zip(whole, split))


def mixed_sizes():
    "Face photos of many sizes and aspect ratios (cut from the astronaut), a blank one and one too small to search."
    a = skimage.data.astronaut()
    cuts = [a[:256, 128:384], a[60:300, 150:330], a[30:250, 120:400], a[100:356:2, 100:356:2], a[40:200, 160:320]]
    cuts += [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((int(c.shape[1] * f), int(c.shape[0] * f))))
             for c, f in zip(cuts[:3], (0.45, 0.6, 0.8))]
    return [np.ascontiguousarray(c) for c in cuts] + [np.full((90, 140, 3), 200, np.uint8), np.ascontiguousarray(a[:30, :30])]


def real_photos(n=48):
    files = sorted(REAL.glob("*.jpg"))
    if not files: pytest.skip("../shared/data/realmask-dev is not here")
    return [np.asarray(Image.open(files[i]).convert("RGB")) for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


@pytest.mark.parametrize("photos", [mixed_sizes, real_photos], ids=["astronaut", "realmask"])
def test_letterboxed_canvas_gives_each_image_its_own_faces(photos):
    "Images of different sizes on one canvas: the same faces as each image alone (boxes to 1e-3 px)."
    imgs = [faces.shrink(p, 160)[0] for p in photos()]
    assert len({i.shape for i in imgs}) > len(imgs) // 2            # really mixed sizes
    canvas, sizes = faces.letterbox(imgs)
    together = faces.mtcnn_detect(canvas, min_face_size=20, sizes=sizes)
    alone = [faces.mtcnn_detect(i, min_face_size=20)[0] for i in imgs]
    assert all(same(t, a, tol=1e-3) for t, a in zip(together, alone))
    assert sum(len(t[0]) > 0 for t in together) >= len(imgs) // 2   # faces were found: not vacuous


def test_detect_groups_letterbox_and_workers_match_one_by_one():
    "`_detect_groups` with the default detector (letterboxed groups, 2 workers side by side) = each image alone."
    imgs = [faces.shrink(p, 160)[0] for p in mixed_sizes()]
    calls = []
    det = faces.default_detector(min_face_size=20, threads=2)
    real_many = det.many
    det.many = lambda jobs: calls.append([len(j[0]) for j in jobs]) or real_many(jobs)
    before = torch.get_num_threads()
    got = faces._detect_groups(imgs, det)
    assert torch.get_num_threads() == before                         # the workers' one thread each is undone
    assert len(calls) == 1 and len(calls[0]) >= 2 and sum(calls[0]) == len(imgs)   # groups, not one by one
    assert all(same(g, faces.mtcnn_detect(i, min_face_size=20)[0], tol=1e-3) for g, i in zip(got, imgs))


def test_canvas_groups_bound_waste_and_orientation():
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in rng.integers(40, 400, 2)) for _ in range(200)]
    groups = faces.canvas_groups(shapes, batch_size=16, waste=2.5)
    assert sorted(i for g in groups for i in g) == list(range(200))
    for g in groups:
        hs, ws = [shapes[i][0] for i in g], [shapes[i][1] for i in g]
        assert len(g) <= 16 and len({h > w for h, w in zip(hs, ws)}) == 1
        assert max(hs) * max(ws) <= 2.5 * min(h * w for h, w in zip(hs, ws))
    assert len(groups) < 100                                           # groups, not one image each


def test_letterbox_sizes_are_checked():
    canvas, sizes = faces.letterbox([np.zeros((50, 60, 3), np.uint8), np.zeros((70, 20, 3), np.uint8)])
    assert canvas.shape == (2, 70, 60, 3) and sizes.tolist() == [[50, 60], [70, 20]]
    with pytest.raises(ValueError, match="do not fit"):
        faces.mtcnn_detect(canvas, sizes=[[80, 60], [70, 20]])
