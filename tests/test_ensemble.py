import json
import numpy as np, pandas as pd, pytest, torch
from maskkit.labels import PROB_COLS
from maskkit.runs import prob_matrix
from maskkit.ensemble import (soft_vote, hard_vote, top2_rule, fit_weights, compare_methods, apply_method, align_preds,
                              fold_average, combine_runs, group_runs, recipe_name, make_submission, validate_submission,
                              write_submission, score_submission, pseudo_labels, tta_predict)
from maskkit.metrics import score


def onehotish(classes, p=0.6):
    P = np.full((len(classes), 18), (1 - p) / 17)
    P[np.arange(len(classes)), classes] = p
    return P


def members(n=500, accs=(0.85, 0.55, 0.25), seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 18, n)
    out = []
    for a in accs:
        top = np.where(rng.random(n) < a, y, rng.integers(0, 18, n))
        z = rng.normal(0, 1, (n, 18)); z[np.arange(n), top] += 2.0
        P = np.exp(z); out.append(P / P.sum(1, keepdims=True))
    return out, y


# --- voting -----------------------------------------------------------------------------------------------

def test_soft_vote_hand_made():
    a = onehotish([0, 1], 0.6); b = onehotish([1, 1], 0.9)
    P = soft_vote([a, b])
    assert np.allclose(P[0, :2], [(0.6 + 0.1 / 17) / 2, (0.4 / 17 + 0.9) / 2]) and np.allclose(P.sum(1), 1)
    assert soft_vote([a, b], [3, 1]).argmax(1).tolist() == [0, 1]
    assert soft_vote([a, b], [1, 3]).argmax(1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="weights"): soft_vote([a, b], [1, -1])
    with pytest.raises(ValueError, match="rows"): soft_vote([a, b[:1]])


def test_hard_vote_majority_and_tie_break():
    preds = [[0, 1, 2, 3], [0, 4, 5, 3], [7, 4, 6, 8]]
    # row 0: 0 wins 2-1; row 1: 4 wins 2-1; row 2: three-way tie; row 3: 3 wins
    assert hard_vote(preds, scores=[0.1, 0.2, 0.9]).tolist() == [0, 4, 6, 3]   # tie -> member 2 (best)
    assert hard_vote(preds, scores=[0.9, 0.2, 0.1]).tolist() == [0, 4, 2, 3]   # tie -> member 0 (best)
    # a tie between two classes: the best member among those who voted for a tied class decides
    assert hard_vote([[1], [2], [1], [2], [9]], scores=[0.1, 0.5, 0.2, 0.3, 0.99]).tolist() == [2]
    with pytest.raises(ValueError, match="scores"): hard_vote(preds, scores=[1, 2])


def test_top2_rule():
    P = np.zeros((3, 18))
    P[0, [4, 9]] = [0.50, 0.48]     # close: prefer the more frequent class
    P[1, [4, 9]] = [0.70, 0.28]     # far apart: keep argmax
    P[2, [9, 4]] = [0.50, 0.48]
    counts = np.ones(18); counts[9] = 100
    assert top2_rule(P, counts, 0.05).tolist() == [9, 4, 9]
    counts2 = np.ones(18); counts2[4] = 100
    assert top2_rule(P, counts2, 0.05).tolist() == [4, 4, 4]
    assert top2_rule(P, counts, 0.0).tolist() == P.argmax(1).tolist()


def test_fit_weights_not_worse_than_equal_and_favours_good_member():
    mem, y = members()
    eq = soft_vote(mem)
    ll = lambda P: -np.log(P[np.arange(len(y)), y]).mean()
    w = fit_weights(mem, y, "log_loss")
    assert ll(soft_vote(mem, w)) <= ll(eq) + 1e-12
    assert w[0] > w[1] > w[2] - 1e-9 and np.isclose(w.sum(), 1)
    wf = fit_weights(mem, y, "macro_f1", n_iter=100)
    assert score(y, soft_vote(mem, wf).argmax(1))["macro_f1"] >= score(y, eq.argmax(1))["macro_f1"]
    with pytest.raises(ValueError, match="metric"): fit_weights(mem, y, "auc")


def test_compare_methods_table():
    mem, y = members()
    t, w, ms = compare_methods(mem, y, class_counts=np.bincount(y, minlength=18), folds=np.arange(len(y)) % 4)
    assert set(t.method) == {"member:0", "member:1", "member:2", "soft", "weighted", "hard", "top2"}
    row = t.set_index("method")
    for m in ("soft", "hard"):
        assert row.loc[m, "macro_f1"] == pytest.approx(score(y, apply_method(m, mem, scores=ms))["macro_f1"])
    assert row.loc["member:2", "macro_f1"] == pytest.approx(ms[2]) and t.macro_f1.is_monotonic_decreasing
    assert "cross-fitted" in row.loc["weighted", "name"]


def test_align_preds():
    a = pd.DataFrame({"path": ["x", "y", "z"], "label": [0, 1, 2]}).join(pd.DataFrame(onehotish([0, 1, 2]), columns=PROB_COLS))
    b = a.iloc[[2, 0, 1]].reset_index(drop=True)
    keys, (pa, pb) = align_preds([a, b])
    assert keys.path.tolist() == ["x", "y", "z"] and np.allclose(pa, pb)
    with pytest.raises(ValueError, match="how='inner'"): align_preds([a, b.iloc[:2]])
    keys, _ = align_preds([a, b.iloc[:2]], how="inner")
    assert len(keys) == 2 and keys.attrs["dropped"]["member 0"] == 1


# --- runs and folds -----------------------------------------------------------------------------------------

def _run(root, name, paths, labels, P, test_ids=None, TP=None, recipe=None):
    d = root / name; d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"recipe": recipe}))
    pd.DataFrame({"path": paths, "label": labels}).join(pd.DataFrame(P, columns=PROB_COLS)).to_csv(d / "oof.csv", index=False)
    if test_ids is not None:
        pd.DataFrame({"ImageID": test_ids}).join(pd.DataFrame(TP, columns=PROB_COLS)).to_csv(d / "test.csv", index=False)
    return d


def test_fold_ensemble(tmp_path):
    ids = ["t1", "t2"]
    r0 = _run(tmp_path, "rec_fold0", ["a", "b"], [0, 1], onehotish([0, 1]), ids, onehotish([3, 4], 0.9))
    r1 = _run(tmp_path, "rec_fold1", ["c"], [2], onehotish([2]), ids[::-1], onehotish([4, 5], 0.5))
    other = _run(tmp_path, "x1", ["a"], [0], onehotish([0]), recipe="rec2")
    assert recipe_name(r0) == recipe_name(r1) == "rec" and recipe_name(other) == "rec2"
    assert {k: len(v) for k, v in group_runs([r0, r1, other]).items()} == {"rec": 2, "rec2": 1}
    c = combine_runs([r0, r1])
    assert sorted(c["oof"].path) == ["a", "b", "c"]
    P = prob_matrix(c["test"].set_index("ImageID").loc[["t1", "t2"]])
    assert np.allclose(P, (onehotish([3, 4], 0.9) + onehotish([5, 4], 0.5)) / 2)
    assert combine_runs([other])["test"] is None
    with pytest.raises(ValueError, match="share validation images"): combine_runs([r0, other])


# --- submission -------------------------------------------------------------------------------------------

INFO = pd.DataFrame({"ImageID": ["c.jpg", "a.jpg", "b.jpg", "d.jpg"], "ans": 0})


def test_make_submission_keeps_info_order():
    sub = make_submission(INFO, pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "pred": [1, 2, 3, 4]}))
    assert sub.ImageID.tolist() == INFO.ImageID.tolist() and sub.ans.tolist() == [3, 1, 2, 4]
    assert make_submission(INFO, np.array([5, 6, 7, 8])).ans.tolist() == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="no prediction"):
        make_submission(INFO, pd.DataFrame({"ImageID": ["a.jpg"], "pred": [1]}))
    with pytest.raises(ValueError, match="4 info rows"): make_submission(INFO, np.array([1, 2]))


@pytest.mark.parametrize("text,problem", [
    ("ImageID,ans\nc.jpg,1\na.jpg,2\nb.jpg,3\n", "missing"),
    ("ImageID,ans\nc.jpg,1\na.jpg,2\nb.jpg,3\nd.jpg,4\ne.jpg,5\n", "not in"),
    ("ImageID,ans\nc.jpg,1\na.jpg,2\nb.jpg,3\nd.jpg,4\nd.jpg,4\n", "duplicated"),
    ("ImageID,ans\nc.jpg,1\na.jpg,18\nb.jpg,3\nd.jpg,4\n", "0..17"),
    ("ImageID,ans\nc.jpg,1\na.jpg,-1\nb.jpg,3\nd.jpg,4\n", "0..17"),
    ("ImageID,ans\nc.jpg,1\na.jpg,2.5\nb.jpg,3\nd.jpg,4\n", "integers"),
    ("ImageID,ans\nc.jpg,1\na.jpg,two\nb.jpg,3\nd.jpg,4\n", "integers"),
    ("ImageID,ans\nc.jpg,1\na.jpg,\nb.jpg,3\nd.jpg,4\n", "integers"),
    ("ImageID,pred\nc.jpg,1\na.jpg,2\nb.jpg,3\nd.jpg,4\n", "columns"),
    ("ImageID,ans,extra\nc.jpg,1,0\na.jpg,2,0\nb.jpg,3,0\nd.jpg,4,0\n", "columns"),
    ("ImageID,ans\na.jpg,2\nc.jpg,1\nb.jpg,3\nd.jpg,4\n", "order"),
])
def test_validate_submission_refuses_bad_files(tmp_path, text, problem):
    p = tmp_path / "sub.csv"; p.write_text(text)
    with pytest.raises(ValueError, match=problem) as e:
        validate_submission(p, INFO)
    assert str(p) in str(e.value)


def test_validate_and_write_good_file(tmp_path):
    p = tmp_path / "ok.csv"; p.write_text("ImageID,ans\nc.jpg,1\na.jpg,2.0\nb.jpg,17\nd.jpg,0\n")
    sub = validate_submission(p, INFO)
    assert sub.ans.tolist() == [1, 2, 17, 0] and sub.ans.dtype.kind == "i"
    out = write_submission(sub, INFO, tmp_path / "w" / "s.csv")
    assert pd.read_csv(out).equals(pd.DataFrame({"ImageID": INFO.ImageID, "ans": [1, 2, 17, 0]}))
    with pytest.raises(ValueError): write_submission(sub.iloc[:2], INFO, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_score_submission_hand_computed(tmp_path):
    sol = tmp_path / "solution.csv"
    pd.DataFrame({"ImageID": ["a", "b", "c", "d", "e"], "ans": [0, 0, 1, 1, 2], "mask": 0}).to_csv(sol, index=False)
    sub = pd.DataFrame({"ImageID": ["e", "d", "c", "b", "a"], "ans": [2, 0, 1, 0, 0]})   # any order
    s = score_submission(sub, sol)
    # class 0: tp 2, fp 1, fn 0 -> 0.8; class 1: tp 1, fp 0, fn 1 -> 2/3; class 2: 1
    assert s["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 1) / 3) and s["accuracy"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="missing"): score_submission(sub.iloc[:4], sol)


def test_pseudo_labels():
    t = pd.DataFrame({"ImageID": list("abcd"), "path": [f"/e/{c}" for c in "abcd"]})
    P = onehotish([3, 4, 5, 6], 0.5); P[1] = onehotish([4], 0.97)[0]; P[3] = onehotish([6], 0.9)[0]
    pl = pseudo_labels(t, P, 0.9)
    assert pl.path.tolist() == ["/e/b", "/e/d"] and pl.label.tolist() == [4, 6]
    assert len(pseudo_labels(t.join(pd.DataFrame(P, columns=PROB_COLS)), threshold=0.95)) == 1
    with pytest.raises(ValueError): pseudo_labels(t, P, 0)
    with pytest.raises(ValueError, match="probs"): pseudo_labels(t, P[:2], 0.9)


# --- TTA --------------------------------------------------------------------------------------------------

class _Sided(torch.nn.Module):
    "Class 0 logit = mean of the left half, class 1 = right half: flipping swaps them."
    def forward(self, x):
        W = x.shape[-1]
        z = torch.zeros(len(x), 18)
        z[:, 0] = x[..., : W // 2].mean((1, 2, 3)) * 10
        z[:, 1] = x[..., W // 2:].mean((1, 2, 3)) * 10
        return {"logits": z}
    def parameters(self, recurse=True):
        yield torch.zeros(1)


class _DS(torch.utils.data.Dataset):
    def __init__(self, x): self.x = x
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return {"image": self.x[i], "label": torch.tensor(-1), "index": torch.tensor(i)}


def test_tta_predict_flip_average():
    x = torch.zeros(5, 3, 8, 8); x[:, :, :, :4] = 1.0     # bright left half
    dl = torch.utils.data.DataLoader(_DS(x), batch_size=2, shuffle=True)   # any order comes back in dataset order
    p0 = tta_predict(_Sided(), dl, ("none",), progress=False)
    pf = tta_predict(_Sided(), dl, ("hflip",), progress=False)
    pb = tta_predict(_Sided(), dl, ("none", "hflip"), progress=False)
    assert (p0.argmax(1) == 0).all() and (pf.argmax(1) == 1).all()
    assert np.allclose(pb, (p0 + pf) / 2, atol=1e-6) and np.allclose(pb[:, 0], pb[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match="unknown TTA"): tta_predict(_Sided(), dl, ("vflip",))
