import numpy as np, pandas as pd, pytest
from maskkit.metrics import score, per_class_f1, confusion, part_confusions, plot_confusion, decode, as_labels


def _rand(n=300, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 18, n)
    p = np.where(rng.random(n) < 0.6, t, rng.integers(0, 18, n))
    return t, p


def test_score_matches_manual_definitions():
    t, p = _rand()
    s = score(t, p)
    assert s["accuracy"] == pytest.approx((t == p).mean())
    assert s["mask_acc"] == pytest.approx((t // 6 == p // 6).mean())
    assert s["gender_acc"] == pytest.approx(((t // 3) % 2 == (p // 3) % 2).mean())
    assert s["age_acc"] == pytest.approx((t % 3 == p % 3).mean())
    # macro-F1 by hand over the classes present in y_true or y_pred
    f1s = []
    for c in np.union1d(t, p):
        tp = ((p == c) & (t == c)).sum(); fp = ((p == c) & (t != c)).sum(); fn = ((p != c) & (t == c)).sum()
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert s["macro_f1"] == pytest.approx(np.mean(f1s))


def test_perfect_and_wrong_parts():
    t = np.arange(18)
    assert score(t, t) == {"macro_f1": 1.0, "accuracy": 1.0, "mask_acc": 1.0, "gender_acc": 1.0, "age_acc": 1.0}
    # flipping only the gender keeps mask and age right
    s = score(t, t + np.where((t // 3) % 2 == 0, 3, -3))
    assert s["accuracy"] == 0 and s["gender_acc"] == 0 and s["mask_acc"] == 1 and s["age_acc"] == 1


def test_per_class_table_consistent_with_confusion():
    t, p = _rand(500, 1)
    pc = per_class_f1(t, p)
    cm = confusion(t, p)
    assert len(pc) == 18 and list(pc["class"]) == list(range(18))
    assert (pc.support.values == cm.values.sum(1)).all()
    diag = np.diag(cm.values)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = np.nan_to_num(diag / cm.values.sum(1))
    assert np.allclose(pc.recall.values, rec)
    assert pc.name.tolist() == cm.index.tolist() == cm.columns.tolist()
    assert pc.loc[7, ["mask", "gender", "age_bin"]].tolist() == ["incorrect", "male", "30-59"]


def test_part_confusions_sum_and_trace():
    t, p = _rand(200, 2)
    pcs = part_confusions(t, p)
    d_t, d_p = decode(t), decode(p)
    for k, shape in [("mask", 3), ("gender", 2), ("age", 3)]:
        assert pcs[k].shape == (shape, shape) and pcs[k].values.sum() == len(t)
        assert np.trace(pcs[k].values) == (d_t[k] == d_p[k]).sum()


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="outside 0..17"): score([0, 1], [0, 18])
    with pytest.raises(ValueError, match="y_true has 2"): score([0, 1], [0])
    with pytest.raises(ValueError, match="1-d"): as_labels(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="integer"): as_labels([0.5, 1])
    with pytest.raises(ValueError, match="empty"): score([], [])


def test_plot_confusion_writes_png(tmp_path):
    import matplotlib; matplotlib.use("Agg")
    t, p = _rand(50, 3)
    fig = plot_confusion(confusion(t, p), tmp_path / "sub" / "cm.png", normalize=True)
    assert (tmp_path / "sub" / "cm.png").stat().st_size > 1000
    import matplotlib.pyplot as plt; plt.close(fig)
