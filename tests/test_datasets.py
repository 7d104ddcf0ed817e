"Tests of maskkit.datasets: image cache, dataset, sampler, loader."
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from maskkit.data import DataError
from maskkit.datasets import ImageCache, MaskDataset, class_counts, class_sampler, make_loader, preload


@pytest.fixture
def images(tmp_path):
    "Five images of different sizes, image i filled with 30 * i, plus a frame with labels and ages."
    paths = []
    for i, (w, h) in enumerate([(40, 60), (80, 50), (64, 64), (30, 30), (100, 20)]):
        p = tmp_path / f"im{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(np.full((h, w, 3), 30 * i, np.uint8)).save(p, quality=100)
        paths.append(str(p))
    df = pd.DataFrame({"path": paths, "label": [0, 3, 17, 8, 3], "age": [19.0, 33, 61, 45, 29]})
    return tmp_path, df


# ---------------------------------------------------------------- class counts and sampler
def test_class_counts():
    assert class_counts([0, 2, 2, 17]).tolist() == [1, 0, 2] + [0] * 14 + [1]
    assert class_counts(np.array([1.0, 1.0]), 3).tolist() == [0, 2, 0]
    with pytest.raises(ValueError, match="18"): class_counts([0, 18])
    with pytest.raises(ValueError, match="-1"): class_counts([-1, 2])
    with pytest.raises(ValueError): class_counts([0.5])


IMBALANCED = np.repeat([0, 4, 9, 17], [2000, 300, 40, 5])


@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_sampler_class_mix_follows_count_power(power):
    n = 40000
    drawn = IMBALANCED[list(class_sampler(IMBALANCED, power=power, num_samples=n, seed=0))]
    got = class_counts(drawn)[[0, 4, 9, 17]] / n
    counts = np.array([2000, 300, 40, 5], float)
    expect = counts ** (1 - power) / (counts ** (1 - power)).sum()     # class mass = count * count^-power
    sigma = np.sqrt(expect * (1 - expect) / n)
    assert np.all(np.abs(got - expect) < 5 * sigma + 1e-9), (got, expect)


def test_sampler_draws_every_image_of_a_class_alike():
    labels = np.array([0] * 10 + [1] * 2)
    idx = np.array(list(class_sampler(labels, power=1.0, num_samples=24000, seed=1)))
    per_image = np.bincount(idx, minlength=12)
    assert np.allclose(per_image[:10] / 24000, 0.05, atol=0.01) and np.allclose(per_image[10:] / 24000, 0.25, atol=0.02)


def test_sampler_seed_reproduces_and_default_length():
    s1, s2, s3 = (list(class_sampler(IMBALANCED, seed=s)) for s in (3, 3, 4))
    assert s1 == s2 and s1 != s3 and len(s1) == len(IMBALANCED)


# ---------------------------------------------------------------- image cache
def test_cache_decodes_resizes_and_keeps_order(images):
    _, df = images
    c = ImageCache(df.path, size=(24, 32), progress=False)
    assert c.array.shape == (5, 24, 32, 3) and c.array.dtype == np.uint8 and c.array.flags.c_contiguous
    for i, p in enumerate(df.path):
        assert np.abs(c[p].astype(int) - 30 * i).max() <= 2              # the right image in the right row
    assert len(c) == 5 and df.path[0] in c and "nope" not in c
    with pytest.raises(KeyError, match="nope"): c["nope"]


def test_cache_margin_and_centre_crop(tmp_path):
    a = np.zeros((100, 80, 3), np.uint8)
    a[25:75, 20:60] = 200
    p = tmp_path / "c.png"; Image.fromarray(a).save(p)
    c = ImageCache([p], size=(50, 40), crop=(50, 40), progress=False)
    assert c.array.shape == (1, 50, 40, 3) and (c[str(p)] == 200).all()
    m = ImageCache([p], size=(50, 40), margin=0.1, progress=False)
    assert m.size == (55, 44) and m.array.shape == (1, 55, 44, 3)


def test_preload_unique_paths(images):
    _, df = images
    c = preload(pd.concat([df, df]), size=(16, 16), progress=False)
    assert len(c) == 5
    with pytest.raises(KeyError, match="crop_path"): preload(df, image_col="crop_path")


def test_disk_cache_is_reused_and_keyed_on_mtime(images):
    tmp, df = images
    d = tmp / "cache"
    c1 = ImageCache(df.path, size=(16, 16), cache_dir=d, progress=False)
    files = sorted(d.glob("*.npy"))
    assert len(files) == 1 and not list(d.glob("*.tmp*"))
    c2 = ImageCache(df.path, size=(16, 16), cache_dir=d, progress=False)
    assert isinstance(c2.array, np.memmap) and np.array_equal(c1.array, c2.array) and c2.file == c1.file
    Image.fromarray(np.full((10, 10, 3), 250, np.uint8)).save(df.path[1])        # the image changed
    os.utime(df.path[1], ns=(os.stat(df.path[1]).st_atime_ns, os.stat(df.path[1]).st_mtime_ns + 10**9))
    c3 = ImageCache(df.path, size=(16, 16), cache_dir=d, progress=False)
    assert c3.file != c1.file and (c3[df.path[1]] == 250).all()
    c4 = ImageCache(df.path, size=(20, 16), cache_dir=d, progress=False)
    assert c4.file not in (c1.file, c3.file)


def test_cache_bad_and_missing_files_are_named(images):
    tmp, df = images
    bad1, bad2 = tmp / "bad1.jpg", tmp / "bad2.png"
    bad1.write_bytes(b"garbage"); bad2.write_bytes(b"\x89PNG nope")
    with pytest.raises(DataError) as e:
        ImageCache(list(df.path) + [bad1, bad2], size=(8, 8), cache_dir=tmp / "cache", progress=False)
    assert "bad1.jpg" in str(e.value) and "bad2.png" in str(e.value)
    assert not list((tmp / "cache").glob("*"))                                # no half-written cache left
    with pytest.raises(DataError, match="missing.jpg"):
        ImageCache([tmp / "missing.jpg"], size=(8, 8), progress=False)


# ---------------------------------------------------------------- dataset
def test_dataset_items(images):
    _, df = images
    ds = MaskDataset(df, transform=lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1).float() + 1)
    it = ds[2]
    assert set(it) == {"image", "label", "age", "index"}
    assert it["label"].dtype == torch.long and it["label"].item() == 17
    assert it["age"].dtype == torch.float32 and it["age"].item() == 61
    assert it["index"].item() == 2 and it["image"].shape == (3, 64, 64) and it["image"].min() == 61


def test_dataset_default_transform_and_cache_give_same_pixels(images):
    _, df = images
    c = preload(df, size=(32, 32), progress=False)
    cached = MaskDataset(df, cache=c)
    x = cached[1]["image"]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert torch.allclose(x, torch.full_like(x, 30 / 255), atol=2 / 255)


def test_dataset_subset_of_a_cache(images):
    _, df = images
    c = preload(df, size=(8, 8), progress=False)
    sub = df.iloc[[4, 1]]
    ds = MaskDataset(sub, cache=c)
    assert len(ds) == 2 and ds[0]["label"].item() == 3 and ds[0]["index"].item() == 0
    with pytest.raises(KeyError, match="other.jpg"): MaskDataset(pd.DataFrame({"path": ["/x/other.jpg"]}), cache=c)


def test_eval_frame_without_labels(images):
    _, df = images
    ds = MaskDataset(df[["path"]])
    it = ds[0]
    assert it["label"].item() == -1 and torch.isnan(it["age"])
    ds2 = MaskDataset(df.assign(label=[np.nan, 1, np.nan, 2, 3]))
    assert ds2.labels.tolist() == [-1, 1, -1, 2, 3]


def test_dataset_errors_name_the_file(images):
    tmp, df = images
    bad = tmp / "broken.jpg"; bad.write_bytes(b"xx")
    with pytest.raises(DataError, match="broken.jpg"): MaskDataset(pd.DataFrame({"path": [str(bad)]}))[0]
    with pytest.raises(DataError, match="im0"): MaskDataset(df, transform=lambda a: 1 / 0)[0]
    with pytest.raises(DataError, match="im0.*float tensor"): MaskDataset(df, transform=lambda a: a)[0]
    with pytest.raises(KeyError, match="crop_path"): MaskDataset(df, image_col="crop_path")


# ---------------------------------------------------------------- loader
def test_loader_batches_and_sampler(images):
    _, df = images
    ds = MaskDataset(df, cache=preload(df, size=(8, 8), progress=False))
    b = next(iter(make_loader(ds, batch_size=5)))
    assert b["image"].shape == (5, 3, 8, 8) and b["label"].tolist() == df.label.tolist()
    assert b["index"].tolist() == list(range(5))
    s = class_sampler(ds.labels, num_samples=20, seed=0)
    dl = make_loader(ds, batch_size=4, sampler=s, drop_last=True)
    assert len(dl) == 5
    with pytest.raises(ValueError, match="sampler"): make_loader(ds, shuffle=True, sampler=s)


def test_loader_seed_reproduces_order(images):
    _, df = images
    ds = MaskDataset(df, cache=preload(df, size=(8, 8), progress=False))
    order = lambda seed: [i for b in make_loader(ds, 2, shuffle=True, seed=seed) for i in b["index"].tolist()]
    assert order(5) == order(5) and sorted(order(5)) == list(range(5))


def test_loader_with_workers(images):
    _, df = images
    ds = MaskDataset(df, cache=preload(df, size=(8, 8), progress=False))
    dl = make_loader(ds, batch_size=5, num_workers=1)
    assert dl.persistent_workers and dl.pin_memory == torch.cuda.is_available()
    b = next(iter(dl))
    assert sorted(b["index"].tolist()) == list(range(5))


def test_file_backed_cache_pickles_without_the_pixels(images):
    import pickle
    tmp, df = images
    c = ImageCache(df.path, size=(64, 64), cache_dir=tmp / "cache", progress=False)
    blob = pickle.dumps(c)
    assert len(blob) < c.nbytes / 4
    c2 = pickle.loads(blob)
    assert np.array_equal(c2.array, c.array) and c2[df.path[3]].shape == (64, 64, 3)
    mem = ImageCache(df.path, size=(64, 64), progress=False)             # in memory: the pixels travel
    assert np.array_equal(pickle.loads(pickle.dumps(mem)).array, mem.array)
