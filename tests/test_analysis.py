import json
import numpy as np, pandas as pd, pytest, torch, torch.nn as nn
from maskkit.runs import find_runs, read_preds
from maskkit.labels import PROB_COLS
from maskkit.inference import Member
from maskkit.analysis import (error_kind, error_breakdown, accuracy_by_age, sample_loss,
                              worst_examples, gradcam, cam_face_share, box_area_share, face_boxes, noise_suspects,
                              person_suspects, noise_overrides, analyse_run)
from maskkit.data import DataError, read_overrides, apply_overrides
from maskkit.models import build_model

STEMS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]


def make_oof(n_persons=30, seed=0, conf=3.0):
    "Predictions peaked on the true label (all right), 7 images per person."
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_persons):
        g, age = i % 2, [21, 40, 70][i % 3]
        a = 0 if age < 30 else 1 if age < 60 else 2
        for s, m in zip(STEMS, [0, 0, 0, 0, 0, 1, 2]):
            rows.append(dict(person_id=f"{i:06d}", stem=s, path=f"/x/images/{i:06d}/{s}.jpg", age=age, label=m * 6 + g * 3 + a))
    df = pd.DataFrame(rows)
    logits = rng.normal(0, 0.5, (len(df), 18)); logits[np.arange(len(df)), df.label] += conf
    P = np.exp(logits); P /= P.sum(1, keepdims=True)
    out = pd.concat([df, pd.DataFrame(P, columns=PROB_COLS)], axis=1)
    out["pred"] = P.argmax(1)
    return out


# --- Grad-CAM -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["single", "multi"])
def test_gradcam_shape_and_range(head):
    torch.manual_seed(0)
    m = build_model("resnet10t", head=head, pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    cams = gradcam(m, x, targets=[7, 17])
    assert cams.shape == (2, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1 and np.isfinite(cams).all()
    if head == "single":
        assert gradcam(m, x).shape == (2, 64, 64)  # predicted class
    else:
        assert gradcam(m, x, targets=[0, 1], part="gender").shape == (2, 64, 64)
        with pytest.raises(KeyError):
            gradcam(m, x, targets=[0, 0], part="logits")
    assert m.training  # mode restored


class _Patch(nn.Module):
    "Positive conv without bias, class 0 weighted +1 and class 1 -1: evidence for class 0 is where the image is bright."
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        with torch.no_grad(): self.conv.weight.copy_(torch.rand_like(self.conv.weight))
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad(): self.fc.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
    def forward(self, x):
        return {"logits": self.fc(torch.relu(self.conv(x)).mean((2, 3)))}


def test_gradcam_attends_to_the_evidence():
    m = _Patch()
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, 2:10, 4:12] = 1.0
    x[1, :, 20:30, 18:28] = 1.0
    cams = gradcam(m, x, targets=[0, 0], layer=m.conv)
    share = cam_face_share(cams, [(3, 1, 13, 11), (17, 19, 29, 31)])   # the patches and the 3x3 conv's reach
    assert (share > 0.95).all()
    # the other image's box holds almost nothing
    assert cam_face_share(cams[0], (18, 20, 28, 30)) < 0.1


def test_gradcam_refuses_vit_and_bad_input():
    vit = build_model("vit_tiny_patch16_224", img_size=32, pretrained=False)
    with pytest.raises(NotImplementedError, match="transformer"):
        gradcam(vit, torch.randn(1, 3, 32, 32), targets=[0])
    m = build_model("resnet10t", pretrained=False)
    with pytest.raises(ValueError, match="N, 3, H, W"):
        gradcam(m, torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="targets"):
        gradcam(m, torch.randn(2, 3, 64, 64), targets=[1])


# --- face share -----------------------------------------------------------------------------------------------

def test_cam_face_share_hand_made():
    cam = np.zeros((8, 8)); cam[0:2, 0:2] = 1.0; cam[6:8, 6:8] = 3.0     # 4 inside, 12 outside
    assert cam_face_share(cam, (0, 0, 2, 2)) == pytest.approx(0.25)
    assert cam_face_share(cam, (0, 0, 8, 8)) == pytest.approx(1.0)
    assert cam_face_share(cam, (6, 6, 8, 8)) == pytest.approx(0.75)
    assert np.isnan(cam_face_share(cam, (np.nan,) * 4)) and np.isnan(cam_face_share(np.zeros((4, 4)), (0, 0, 4, 4)))
    assert box_area_share((8, 8), (0, 0, 4, 8)) == pytest.approx(0.5)


def test_face_boxes_from_a_face_table():
    "Boxes of the Predictor's face table mapped into the model input of the crop (or of the whole photo)."
    ft = pd.DataFrame(dict(method=["mtcnn", "fallback"], width=[200, 200], height=[100, 100], x1=[20.0, np.nan], y1=[10.0, np.nan],
                           x2=[120.0, np.nan], y2=[60.0, np.nan], crop_x1=[0, 40], crop_y1=[0, 0], crop_x2=[100, 140], crop_y2=[100, 100]))
    b = face_boxes(ft, (50, 50), use_crops=False)
    assert b[0] == pytest.approx([5, 5, 30, 30]) and np.isnan(b[1]).all()
    assert face_boxes(ft, (50, 50))[0] == pytest.approx([10, 5, 50, 30])   # in the 100x100 crop, clipped to it


# --- error analysis -------------------------------------------------------------------------------------------

def test_error_breakdown_hand_made():
    # label 4 = wear/male/30-59 ... pred: same, age, gender, mask, gender+age, mask+gender+age
    yt = [4, 4, 4, 4, 4, 4, 4]
    yp = [4, 4, 3, 1, 10, 0, 17]
    assert list(error_kind(yt, yp)) == ["correct", "correct", "age only", "gender only", "mask only", "several", "several"]
    eb = error_breakdown(yt, yp).set_index("kind")
    assert eb.n.to_dict() == {"correct": 2, "mask only": 1, "gender only": 1, "age only": 1, "several": 2}
    assert eb.loc["several", "share_of_errors"] == pytest.approx(2 / 5) and eb.loc["correct", "share"] == pytest.approx(2 / 7)
    with pytest.raises(ValueError):
        error_breakdown([0, 1], [0])


def test_accuracy_by_age_and_worst():
    oof = make_oof()
    oof.loc[oof.age == 40, "pred"] = oof.loc[oof.age == 40, "label"] - 1   # all 30-59 wrong on age
    t = accuracy_by_age(oof).set_index("age")
    assert t.loc[40, "accuracy"] == 0 and t.loc[21, "accuracy"] == 1 and t.n.sum() == len(oof)
    t2 = accuracy_by_age(oof.drop(columns="age"), oof[["path", "age"]])
    assert t2.equals(t.reset_index())
    w = worst_examples(oof, 5)
    assert list(w.loss) == sorted(sample_loss(oof), reverse=True)[:5]


def test_read_preds_refuses_bad_files(tmp_path):
    oof = make_oof(4)
    oof.drop(columns="prob_3").to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DataError, match="prob_3"): read_preds(tmp_path / "a.csv")
    pd.concat([oof, oof.head(1)]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match="duplicate"): read_preds(tmp_path / "b.csv")
    bad = oof.copy(); bad.loc[2, PROB_COLS] = 0.5; bad.to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(DataError, match="line 4"): read_preds(tmp_path / "c.csv")
    with pytest.raises(FileNotFoundError): read_preds(tmp_path / "nope.csv")


# --- label noise ----------------------------------------------------------------------------------------------

def test_noise_suspects_find_planted_flips():
    oof = make_oof(40, seed=1, conf=4.0)
    rng = np.random.default_rng(5)
    flip = rng.choice(len(oof), 12, replace=False)
    oof.loc[flip, "label"] = (oof.loc[flip, "label"] + rng.integers(1, 18, 12)) % 18
    ns = noise_suspects(oof)
    assert set(oof.path[flip]) <= set(ns.path[ns.suspect])
    assert set(ns.path.head(12)) == set(oof.path[flip])          # ranked first
    assert ns.suspect.sum() < 3 * len(flip)


def test_person_suspects_and_overrides_roundtrip():
    oof = make_oof(12)
    sel = oof.person_id == "000004"                    # male, age 40 -> labelled female
    oof.loc[sel, "label"] += 3
    sel = oof.person_id == "000006"                    # age 21 (band 0) labelled 30-59
    oof.loc[sel, "label"] += 1
    ps = person_suspects(oof).set_index("person_id")
    assert ps.loc["000004", "flag_gender"] and not ps.loc["000004", "flag_age"]
    assert ps.loc["000006", "flag_age"] and not ps.loc["000006", "flag_gender"]
    assert ps.flag_gender.sum() == 1 and ps.flag_age.sum() == 1
    i = oof.index[(oof.person_id == "000001") & (oof.stem == "normal")][0]   # not-wear image labelled wear
    oof.loc[i, "label"] -= 12
    ov = noise_overrides(person_suspects(oof), noise_suspects(oof), mask_min_prob=0.3)
    assert {("000004", "gender", "male"), ("000006", "age", "29"), ("000001", "mask:normal", "not wear")} <= set(zip(ov.id, ov.field, ov.value))
    # the exported rows are valid overrides for maskkit.data
    frame = pd.DataFrame([dict(person_id=f"{i:06d}", gender="female" if i == 4 else "male", race="x", age=40, folder="", stem=s, path="", mask=0)
                          for i in range(12) for s in STEMS])
    fixed, report = apply_overrides(frame, read_overrides(ov))
    assert (fixed[fixed.person_id == "000004"].gender == "male").all() and len(report) == len(ov)
    assert fixed.loc[(fixed.person_id == "000001") & (fixed.stem == "normal"), "mask"].item() == 2
    with pytest.raises(KeyError, match="stem"):
        noise_overrides(person_suspects(oof), noise_suspects(oof.drop(columns="stem")), mask_min_prob=0.3)


def test_analyse_run_and_model(tmp_path):
    run = tmp_path / "reports/runs/r"; run.mkdir(parents=True)
    make_oof(9).to_csv(run / "oof.csv", index=False)
    assert find_runs(tmp_path / "reports/runs") == [run]
    res = analyse_run(run, n_examples=3)
    out = tmp_path / "reports/analysis/r"
    assert res["out_dir"] == out and (out / "confusion_gender.png").exists() and (out / "overrides_to_review.csv").exists()
    assert json.loads((out / "analysis.json").read_text())["correct"] == 63
    assert not (out / "per_class.csv").exists() and not (out / "confusion.csv").exists()   # the run's own tables are not copied
    m = build_model("resnet10t", head="single")
    (run / "config.json").write_text(json.dumps({"backbone": "resnet10t", "head": "multi"}))
    torch.save({"model": m.state_dict()}, run / "best.pt")
    with pytest.raises(ValueError, match="best.pt"): Member.from_run(run)
    (run / "config.json").write_text(json.dumps({"backbone": "resnet10t", "head": "single"}))
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(Member.from_run(run).model(x)["logits"], m.eval()(x)["logits"])
