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
    monkeypatch.setattr(faces, "_detect_batch", lambda m, imgs: calls.append(len(imgs)) or real(m, imgs))
    monkeypatch.setattr(faces, "SAT_BUDGET", x[0].size * 8 * 2)  # room for two images per table
    split = faces.mtcnn_detect(x, min_face_size=20)
    assert calls == [2, 2, 2, 1] and all(same(a, b) for a, b in zip(whole, split))
