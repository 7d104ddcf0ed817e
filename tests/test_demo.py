"Behaviour of maskkit.demo: the drawn demo dataset in the competition layout."
import hashlib, json, re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskkit.demo import STEMS, draw_face, ensure_demo_dataset, group_counts, make_demo_dataset, make_persons

SMALL = dict(n_persons=20, n_eval_persons=8)
TINY = dict(n_persons=12, n_eval_persons=6)  # the fewest persons that hold every class
MASK = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}


def _band(age): return 0 if age < 30 else (1 if age < 60 else 2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "d", seed=3, verbose=False, **SMALL)


def _train(root): return pd.read_csv(root / "train" / "train.csv", dtype={"id": str})
def _solution(root): return pd.read_csv(root / "eval" / "solution.csv", dtype={"person_id": str})


def test_train_layout(demo):
    tr = _train(demo)
    assert list(tr.columns) == ["id", "gender", "race", "age", "path"] and len(tr) == SMALL["n_persons"]
    assert tr.id.str.fullmatch(r"\d{6}").all() and tr.id.is_unique
    assert set(tr.gender) == {"male", "female"}
    assert (tr.path == tr.id + "_" + tr.gender + "_" + tr.race + "_" + tr.age.astype(str)).all()
    folders = sorted(p.name for p in (demo / "train" / "images").iterdir())
    assert folders == sorted(tr.path)
    for f in tr.path:
        assert sorted(p.name for p in (demo / "train" / "images" / f).iterdir()) == sorted(s + ".jpg" for s in STEMS)


def test_eval_layout_and_solution(demo):
    info = pd.read_csv(demo / "eval" / "info.csv")
    sol, tr = _solution(demo), _train(demo)
    assert list(info.columns) == ["ImageID", "ans"] and (info.ans == 0).all()
    assert len(info) == 7 * SMALL["n_eval_persons"] and info.ImageID.is_unique
    assert set(info.ImageID) == set(sol.ImageID) == {p.name for p in (demo / "eval" / "images").iterdir()}
    assert list(sol.columns[:5]) == ["ImageID", "ans", "mask", "gender", "age"]
    assert {"age_years", "person_id", "stem"} <= set(sol.columns)
    for r in sol.itertuples():
        assert r.ImageID == hashlib.sha1((r.person_id + r.stem).encode()).hexdigest() + ".jpg"
        assert r.mask == MASK[r.stem] and r.age == _band(r.age_years) and r.ans == r.mask * 6 + r.gender * 3 + r.age
    assert sol.groupby("person_id").stem.apply(lambda s: sorted(s) == sorted(STEMS)).all()
    assert set(sol.person_id).isdisjoint(tr.id)  # persons are split, never shared


def test_images_decode(demo):
    tr = _train(demo)
    for p in [demo / "train" / "images" / tr.path[0] / "normal.jpg", next((demo / "eval" / "images").iterdir())]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (192, 256)


def _train_labels(root):
    tr = _train(root)
    return {MASK[s] * 6 + (g == "female") * 3 + _band(a) for g, a in zip(tr.gender, tr.age) for s in STEMS}


def test_both_splits_cover_18_classes(demo):
    assert _train_labels(demo) == set(range(18))
    assert set(_solution(demo).ans) == set(range(18))


@pytest.mark.parametrize("split", ["train", "eval"])
def test_imbalance(demo, split):
    if split == "train": p = _train(demo).assign(g=lambda d: (d.gender == "female").astype(int))
    else: p = _solution(demo).drop_duplicates("person_id").rename(columns={"age_years": "age_y"}).assign(
        g=lambda d: d.gender, age=lambda d: d.age_y)
    bands = p.age.map(_band).value_counts()
    assert (p.g == 1).sum() > (p.g == 0).sum()
    assert bands[2] < min(bands[0], bands[1])
    assert p.age[p.age.map(_band) == 2].between(60, 80).all()


def test_default_sizes_groups_and_boundary_ages():
    c = group_counts(60, 2)
    assert sum(c.values()) == 60 and min(c.values()) >= 2 and min(group_counts(20, 1).values()) >= 1
    p = make_persons(60, "train", seed=0, minimum=2)
    for g in (0, 1):  # ages next to the band edges, so boundary removal and the 58 threshold change something
        assert p[p.gender_id == g].age.between(27, 29).any() and p[p.gender_id == g].age.between(58, 59).any()
    with pytest.raises(ValueError, match="at least 12"):
        group_counts(11, 2)


def test_deterministic(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", seed=3, verbose=False, **SMALL)
    other = make_demo_dataset(tmp_path / "other", seed=4, verbose=False, **SMALL)
    for rel in ["train/train.csv", "eval/info.csv", "eval/solution.csv"]:
        assert (demo / rel).read_bytes() == (again / rel).read_bytes()
    assert (demo / "train/train.csv").read_bytes() != (other / "train/train.csv").read_bytes()
    tr = _train(demo)
    for f in tr.path[:3]:
        for stem in ("mask1", "incorrect_mask", "normal"):
            a = np.asarray(Image.open(demo / "train/images" / f / f"{stem}.jpg"))
            b = np.asarray(Image.open(again / "train/images" / f / f"{stem}.jpg"))
            assert (a == b).all()
    f0, g0 = tr.path[0], _train(other).path[0]
    a = np.asarray(Image.open(demo / "train/images" / f0 / "normal.jpg"), dtype=int)
    b = np.asarray(Image.open(other / "train/images" / g0 / "normal.jpg"), dtype=int)
    assert np.abs(a - b).mean() > 1


def test_photos_of_a_person_vary(demo):
    f = _train(demo).path[0]
    a, b = (np.asarray(Image.open(demo / "train/images" / f / f"{s}.jpg"), dtype=int) for s in ("mask1", "mask2"))
    assert np.abs(a - b).mean() > 1  # jitter of position/scale/light (and maybe another mask)


def test_mask_covers_the_lower_face():
    look = make_persons(20, "train", seed=0, minimum=2).looks[0]
    im = {s: np.asarray(draw_face(look, s, "white", rng=np.random.default_rng(7)), dtype=int)
          for s in ("correct", "nose", "chin", "none")}
    rows = lambda a, b: slice(int(256 * a), int(256 * b))
    eyes, nostrils, mouth = rows(0.30, 0.40), rows(0.46, 0.48), rows(0.51, 0.55)
    diff = lambda s, r: np.abs(im[s][r] - im["none"][r]).mean()
    print({s: [round(diff(s, r), 1) for r in (eyes, nostrils, mouth)] for s in im})
    assert max(diff(s, eyes) for s in im) < 5  # eyes stay visible
    assert min(diff("correct", nostrils), diff("correct", mouth)) > 20  # worn: nose and mouth covered
    assert diff("nose", mouth) > 20 and diff("nose", nostrils) < diff("correct", nostrils) / 2  # nostrils show
    assert diff("chin", mouth) < diff("correct", mouth) / 2 and diff("chin", nostrils) < 5  # mouth shows
    with pytest.raises(ValueError, match="forehead"):
        draw_face(look, "forehead")


def test_ensure_reuses_and_rebuilds(tmp_path):
    root = tmp_path / "demo"
    assert ensure_demo_dataset(root, verbose=False, **TINY) == root
    csv = root / "train" / "train.csv"
    t = csv.stat().st_mtime_ns
    assert json.loads((root / "demo.json").read_text())["n_persons"] == TINY["n_persons"]
    ensure_demo_dataset(root, verbose=False, **TINY)
    assert csv.stat().st_mtime_ns == t  # same parameters: not rebuilt
    ensure_demo_dataset(root, verbose=False, n_persons=13, n_eval_persons=6)
    assert csv.stat().st_mtime_ns != t and len(_train(root)) == 13
    assert len(list((root / "train" / "images").iterdir())) == 13  # old folders are gone
    csv.unlink()
    ensure_demo_dataset(root, verbose=False, n_persons=13, n_eval_persons=6)
    assert csv.exists()
    with pytest.raises(TypeError, match="n_person"):
        ensure_demo_dataset(root, n_person=3)


def test_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train.csv").write_text("id,gender,race,age,path\n")
    with pytest.raises(FileExistsError, match="train.csv"):
        ensure_demo_dataset(tmp_path, verbose=False, **TINY)
    assert (tmp_path / "train" / "train.csv").read_text() == "id,gender,race,age,path\n"


def test_loads_with_maskkit_data(demo):
    data = pytest.importorskip("maskkit.data")
    df = data.load_train(demo, verbose=False)
    assert len(df) == 7 * SMALL["n_persons"] and set(df.label) == set(range(18))
    ev = data.load_eval(demo)
    assert len(ev) == 7 * SMALL["n_eval_persons"]


def test_ensure_in_parallel(tmp_path):
    "Two processes asking for the same missing set: one builds it, the other waits and reuses it."
    from concurrent.futures import ProcessPoolExecutor
    root = tmp_path / "demo"
    with ProcessPoolExecutor(2) as ex:
        done = list(ex.map(_ensure_small, [root, root]))
    assert done == [root, root]
    meta = json.loads((root / "demo.json").read_text())
    assert meta["complete"] and len(_train(root)) == TINY["n_persons"]
    assert len(list((root / "eval" / "images").iterdir())) == 7 * TINY["n_eval_persons"]


def _ensure_small(root): return ensure_demo_dataset(root, verbose=False, **TINY)
