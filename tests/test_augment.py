"Tests of maskkit.augment: transforms and batch mixes."
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from maskkit.augment import (BatchMix, MIXES, build_transforms, make_mix, parse_augment, same_class_partners)


def const_batch(B=8, H=24, W=40):
    "Image i is filled with the value i, so every pixel says where it came from."
    return torch.arange(B, dtype=torch.float32)[:, None, None, None].expand(B, 3, H, W).clone()


def targets(labels):
    labels = torch.as_tensor(labels)
    return F.one_hot(labels, 18).float(), torch.linspace(18, 80, len(labels))


# ---------------------------------------------------------------- transforms
@pytest.fixture
def img():
    return np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)


def test_transform_output_shape_dtype_and_normalisation(img):
    x = build_transforms((), size=(64, 48), train=False, mean=(0, 0, 0), std=(1, 1, 1))(img)
    assert x.shape == (3, 64, 48) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    y = build_transforms((), size=(64, 48), train=False, mean=mean, std=std)(img)
    assert torch.allclose(y, (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None], atol=1e-5)


def test_accepts_pil_and_ndarray(img):
    t = build_transforms(("hflip",), size=(32, 32), train=False)
    assert torch.allclose(t(img), t(Image.fromarray(img)))


def test_eval_is_deterministic_train_is_not(img):
    aug = ("hflip", {"name": "rotate", "degrees": 30}, "color_jitter", {"name": "erasing", "p": 1.0}, "random_resized_crop")
    ev = build_transforms(aug, size=(48, 48), train=False)
    assert torch.equal(ev(img), ev(img))
    tr = build_transforms(aug, size=(48, 48), train=True)
    torch.manual_seed(0)
    outs = [tr(img) for _ in range(4)]
    assert not all(torch.equal(outs[0], o) for o in outs[1:])


def test_hflip_p1_flips(img):
    a = build_transforms([], size=(120, 90), train=True)(img)
    b = build_transforms([{"name": "hflip", "p": 1.0}], size=(120, 90), train=True)(img)
    assert torch.allclose(b, a.flip(-1))


def test_center_crop_takes_the_centre():
    a = np.zeros((100, 80, 3), np.uint8)
    a[25:75, 20:60] = 255  # a white centre of (50, 40)
    x = build_transforms((), size=(50, 40), train=False, mean=(0, 0, 0), std=(1, 1, 1), crop=(50, 40))(a)
    assert torch.all(x == 1)
    y = build_transforms([{"name": "center_crop", "size": (50, 40)}], size=(50, 40), train=True,
                         mean=(0, 0, 0), std=(1, 1, 1))(a)
    assert torch.all(y == 1)


def test_random_crop_becomes_centre_crop_in_eval():
    ev = build_transforms([{"name": "random_crop", "size": (40, 30)}], size=(40, 30), train=False)
    kinds = [type(t) for t in ev.transforms]
    assert v2.CenterCrop in kinds and v2.RandomCrop not in kinds


def test_erasing_changes_pixels_only_in_train(img):
    aug = [{"name": "erasing", "p": 1.0, "scale": (0.2, 0.3)}]
    base = build_transforms([], size=(64, 64), train=True)(img)
    torch.manual_seed(1)
    er = build_transforms(aug, size=(64, 64), train=True)(img)
    changed = (er != base).any(0).float().mean().item()
    assert 0.1 < changed <= 0.3 + 1e-6
    assert torch.equal(build_transforms(aug, size=(64, 64), train=False)(img), base)


def test_bad_augment_entries_raise():
    with pytest.raises(ValueError, match="flip"): parse_augment(["flip"])
    with pytest.raises(ValueError, match="name"): parse_augment([{"degrees": 3}])
    with pytest.raises(ValueError, match="size"): build_transforms(["center_crop"])
    with pytest.raises(ValueError, match="one crop"): build_transforms([{"name": "center_crop", "size": 10}, "random_resized_crop"])


# ---------------------------------------------------------------- mixes
def test_make_mix_none_and_unknown():
    assert make_mix(None) is None and make_mix("none") is None
    with pytest.raises(ValueError, match="known"): make_mix("cutout")
    for name in MIXES: assert isinstance(make_mix(name), BatchMix)


@pytest.mark.parametrize("seed", range(5))
def test_vertical_cutmix_band_full_height_width_in_bounds_and_lam_is_area(seed):
    B, H, W = 8, 24, 100
    imgs = const_batch(B, H, W)
    y18, age = targets(torch.arange(B))
    mix = make_mix("vertical_cutmix", p=1.0, lower=0.46, upper=0.54, seed=seed)
    out, y, a = mix(imgs, y18, age)
    partner = mix.last["partner"]
    moved = partner != torch.arange(B)
    assert moved.any()
    for i in torch.nonzero(moved).flatten().tolist():
        foreign = (out[i] != imgs[i]).any(0)                     # (H, W) pixels taken from the partner
        cols = foreign.any(0)
        assert foreign[:, cols].all()                            # the band spans the full height
        xs = torch.nonzero(cols).flatten()
        width = len(xs)
        assert xs.max() - xs.min() + 1 == width                  # one contiguous band
        assert 0.46 * W <= width <= 0.54 * W
        assert torch.all(out[i][:, foreign] == partner[i])       # the band is the partner's pixels
        lam = 1 - width / W                                      # kept area fraction
        assert mix.last["lam"][i].item() == pytest.approx(lam)
        assert y[i, i].item() == pytest.approx(lam) and y[i, partner[i]].item() == pytest.approx(1 - lam)
        assert a[i].item() == pytest.approx(lam * age[i].item() + (1 - lam) * age[partner[i]].item(), rel=1e-5)
    assert torch.allclose(y.sum(1), torch.ones(B))


def test_vertical_band_edge_position_touches_a_border():
    for seed in range(6):
        mix = make_mix("vertical_cutmix", p=1.0, lower=0.3, upper=0.4, position="edge", seed=seed)
        mix(const_batch(4, 10, 50), *targets([0, 1, 2, 3]))
        _, _, x0, x1 = mix.last["box"]
        assert x0 == 0 or x1 == 50


@pytest.mark.parametrize("name", ["cutmix", "intra_cutmix"])
def test_cutmix_labels_weighted_by_pasted_area(name):
    B, H, W = 8, 32, 32
    imgs = const_batch(B, H, W)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    y18, age = targets(labels)
    for seed in range(10):
        mix = make_mix(name, p=1.0, alpha=1.0, seed=seed)
        out, y, _ = mix(imgs, y18, age)
        partner = mix.last["partner"]
        for i in range(B):
            if partner[i] == i: continue
            kept = (out[i] == imgs[i]).all(0).float().mean().item()   # exact area fraction from the pixels
            assert mix.last["lam"][i].item() == pytest.approx(kept)
            expect = kept * y18[i] + (1 - kept) * y18[partner[i]]
            assert torch.allclose(y[i], expect, atol=1e-6)


def test_mixup_blends_pixels_and_labels_with_the_same_lam():
    imgs = const_batch(6, 8, 8)
    y18, age = targets(torch.arange(6))
    mix = make_mix("mixup", p=1.0, alpha=0.4, seed=3)
    out, y, a = mix(imgs, y18, age)
    lam, partner = mix.last["lam"], mix.last["partner"]
    for i in range(6):
        assert torch.allclose(out[i], lam[i] * imgs[i] + (1 - lam[i]) * imgs[partner[i]])
        assert torch.allclose(y[i], lam[i] * y18[i] + (1 - lam[i]) * y18[partner[i]])


@pytest.mark.parametrize("name", ["intra_cutmix", "intra_vertical_cutmix"])
def test_intra_class_never_mixes_classes(name):
    labels = torch.tensor([5, 5, 5, 9, 9, 12, 0, 17, 17, 5])    # 12 and 0 have no partner
    B = len(labels)
    imgs = const_batch(B, 16, 16)
    y18, age = targets(labels)
    y18 = y18 * 0.9 + 0.1 / 18                                   # smoothed targets: the argmax decides the class
    for seed in range(20):
        mix = make_mix(name, p=1.0, seed=seed)
        out, y, _ = mix(imgs, y18, age)
        partner = mix.last["partner"]
        assert torch.equal(labels[partner], labels)
        assert torch.equal(y.argmax(1), labels)
        for i in (5, 6):                                          # lone samples stay as they are
            assert partner[i] == i and torch.equal(out[i], imgs[i]) and torch.equal(y[i], y18[i])
        for i in range(B):                                        # every pasted pixel comes from the same class
            src = out[i][0].unique().long()
            assert torch.all(labels[src] == labels[i])
        paired = [i for i in range(B) if i not in (5, 6)]
        assert all(partner[i] != i for i in paired)


def test_intra_class_with_a_training_batch_from_the_loader(tmp_path):
    "A training loader batch: the partners come from that batch only, and always share its class."
    import pandas as pd
    from maskkit.datasets import MaskDataset, make_loader
    rows = []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 20, 3), i * 20, np.uint8)).save(p)
        rows.append({"path": str(p), "label": [1, 4, 13][i % 3], "age": 20 + i})
    df = pd.DataFrame(rows)
    train, valid = df.iloc[:9], df.iloc[9:]
    tf = build_transforms((), size=(20, 20), train=False, mean=(0, 0, 0), std=(1, 1, 1))
    dl = make_loader(MaskDataset(train, tf), batch_size=9, shuffle=True, seed=0)
    b = next(iter(dl))
    mix = make_mix("intra_cutmix", p=1.0, seed=0)
    out, y, _ = mix(b["image"], F.one_hot(b["label"], 18).float(), b["age"])
    partner = mix.last["partner"]
    assert mix.last["applied"] and (partner != torch.arange(9)).all()
    assert torch.equal(b["label"][partner], b["label"]) and torch.equal(y.argmax(1), b["label"])
    values = set((out * 255).round().long().unique().tolist())   # image i is filled with 20 * i
    assert values <= {20 * i for i in range(len(train))}        # no validation pixel (180, 200, 220) anywhere


def test_p0_is_identity_and_p1_always_mixes():
    imgs = const_batch(6, 10, 10)
    y18, age = targets(torch.arange(6))
    for name in MIXES:
        mix = make_mix(name, p=0.0, seed=0)
        for _ in range(5):
            out, y, a = mix(imgs, y18, age)
            assert torch.equal(out, imgs) and torch.equal(y, y18) and torch.equal(a, age)
            assert mix.last == {"applied": False}
    m1 = make_mix("cutmix", p=1.0, seed=0)
    for _ in range(5):
        m1(imgs, y18, age)
        assert m1.last["applied"]


def test_p_is_the_fraction_of_mixed_batches():
    imgs = const_batch(4, 6, 6)
    y18, age = targets(torch.arange(4))
    mix = make_mix("vertical_cutmix", p=0.7, seed=0)
    hits = 0
    for _ in range(2000):
        mix(imgs, y18, age)
        hits += mix.last["applied"]
    assert abs(hits / 2000 - 0.7) < 0.05                        # ~5 sigma


def test_inputs_are_not_modified():
    imgs = const_batch(6, 10, 10)
    y18, age = targets(torch.arange(6))
    copies = imgs.clone(), y18.clone(), age.clone()
    for name in MIXES:
        make_mix(name, p=1.0, seed=0)(imgs, y18, age)
    assert torch.equal(imgs, copies[0]) and torch.equal(y18, copies[1]) and torch.equal(age, copies[2])


@pytest.mark.parametrize("name", MIXES)
def test_seeds_reproduce(name):
    imgs = torch.rand(8, 3, 16, 16)
    y18, age = targets(torch.tensor([0, 1, 0, 1, 2, 2, 3, 3]))
    runs = []
    for seed in (7, 7, 8):
        mix = make_mix(name, p=0.8, seed=seed)
        runs.append([mix(imgs, y18, age) for _ in range(4)])
    same = all(torch.equal(x, z) for r1, r2 in zip(runs[0], runs[1]) for x, z in zip(r1, r2))
    diff = any(not torch.equal(x, z) for r1, r3 in zip(runs[0], runs[2]) for x, z in zip(r1, r3))
    assert same and diff


def test_same_class_partners_is_a_derangement_within_classes():
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 5, (200,), generator=g)
    p = same_class_partners(classes, g)
    assert torch.equal(classes[p], classes)
    counts = torch.bincount(classes)
    lone = counts[classes] == 1
    assert torch.all((p == torch.arange(200)) == lone)
    assert sorted(p.tolist()) == list(range(200))               # a permutation: each image is a partner once


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="y18"):
        make_mix("cutmix", p=1.0)(torch.zeros(4, 3, 8, 8), torch.zeros(3, 18), torch.zeros(4))
