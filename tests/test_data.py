"The data layer on the shared development set and on bad input."
import re
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image
from maskkit.data import (load_train, load_eval, person_folds, audit, DataError, load_image, boundary_ages,
                          read_train_csv, MASK_STEMS)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkmask"
needs_shared = pytest.mark.skipif(not (SHARED / "train" / "train.csv").exists(), reason="shared utkmask set not present")

def readme_counts():
    "Per-class train/eval image counts from the shared set's README table."
    rows = re.findall(r"^\|\s*(\d+)\s*\|[^|]*\|[^|]*\|[^|]*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*$", (SHARED / "README.md").read_text(), re.M)
    return {int(c): (int(t), int(e)) for c, t, e in rows}

@needs_shared
def test_shared_train_matches_readme():
    df = load_train(SHARED)
    assert df.groupby("person_id").size().eq(7).all()
    counts = readme_counts()
    assert len(counts) == 18
    assert df.label.value_counts().sort_index().to_dict() == {c: t for c, (t, e) in counts.items()}
    assert len(load_eval(SHARED)) == sum(e for t, e in counts.values())

@needs_shared
def test_shared_folds_by_person():
    df = person_folds(load_train(SHARED), 5, seed=0)
    assert df.groupby("person_id").fold.nunique().eq(1).all()
    share = pd.crosstab(df.fold, df.label, normalize="index")
    assert (share.max() - share.min()).max() < 0.02
    # another seed gives another split
    assert not (person_folds(df.drop(columns="fold"), 5, seed=1).fold.values == df.fold.values).all()

@needs_shared
def test_drop_boundary_ages_removes_whole_persons():
    df = load_train(SHARED, drop_ages=boundary_ages(), verbose=False)
    assert not df.age.isin([27, 28, 29, 57, 58, 59]).any()
    assert df.groupby("person_id").size().eq(7).all()
    assert len(df) < len(load_train(SHARED))

def make(root, persons=(("000001", "male", 25),), cols="id,gender,race,age,path"):
    tr = Path(root) / "train"; (tr / "images").mkdir(parents=True)
    lines = [cols]
    for pid, g, a in persons:
        d = tr / "images" / f"{pid}_{g}_Asian_{a}"; d.mkdir()
        for s in MASK_STEMS: Image.new("RGB", (48, 48)).save(d / f"{s}.jpg")   # large enough to hold a face
        lines.append(f"{pid},{g},Asian,{a},{d.name}")
    (tr / "train.csv").write_text("\n".join(lines) + "\n")
    return Path(root)

def test_wrong_csv_columns_name_the_file(tmp_path):
    make(tmp_path, cols="id,sex,race,age,path")
    with pytest.raises(DataError, match=r"train\.csv.*missing columns \['gender'\]"): load_train(tmp_path)

def test_bad_csv_values_are_reported(tmp_path):
    root = make(tmp_path)
    csv = root / "train/train.csv"
    csv.write_text(csv.read_text().replace(",male,", ",mael,"))
    with pytest.raises(DataError, match="line 2: gender 'mael'"): load_train(root)

def test_missing_image_raises_and_names_it(tmp_path):
    root = make(tmp_path)
    next((root / "train/images").glob("*/incorrect_mask.jpg")).unlink()
    with pytest.raises(DataError, match="incorrect_mask"): load_train(root)
    assert audit(root, verbose=False).issues.kind.tolist() == ["missing_image"]

def test_any_extension_and_suffixed_ids(tmp_path):
    root = make(tmp_path, persons=(("000600", "female", 40), ("000600-1", "female", 70)))
    d = next((root / "train/images").glob("000600_*"))
    (d / "normal.jpg").rename(d / "normal.PNG")
    df = load_train(root)
    assert sorted(df.person_id.unique()) == ["000600", "000600-1"]
    assert df[df.stem == "normal"].path.str.endswith((".jpg", ".PNG")).all()
    assert set(df[df.person_id == "000600-1"].age_bin) == {2}

def test_load_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (16, 12, 3), dtype=np.uint8)
    for mode in ["L", "RGBA", "CMYK", "P"]:
        p = tmp_path / f"x_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.fromarray(rgb).convert(mode).save(p)
        a = load_image(p)
        assert a.shape == (16, 12, 3) and a.dtype == np.uint8, mode
    transparent = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(transparent)
    assert (load_image(transparent) == 255).all()  # composited on white, not black

def test_eval_missing_image(tmp_path):
    ev = tmp_path / "eval"; (ev / "images").mkdir(parents=True)
    pd.DataFrame({"ImageID": ["a.jpg"], "ans": [0]}).to_csv(ev / "info.csv", index=False)
    with pytest.raises(DataError, match="a.jpg"): load_eval(tmp_path)
