"The quality levers: offline Lite1/Lite2, the person sampler, the person vote, age distributions, EMA, real-photo scores."
import json
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, timm
from PIL import Image

from maskkit import TrainParams, train_run, Predictor
from maskkit.data import load_train, load_image, project_root
from maskkit.demo import ensure_demo_dataset
from maskkit.datasets import PersonSampler
from maskkit.ensemble import person_groups, group_vote, score_mask_state, kfold_ensemble, fit_part_bias, crossfit_part_bias, apply_class_bias
from maskkit.experiment import run_kfold
from maskkit.labels import part_marginals, PROB_COLS
from maskkit.losses import make_loss, age_dist_loss
from maskkit.models import (build_model, list_offline, offline_state_dict, offline_weights_path, imagenet_offline,
                            model_data_config, band_log_probs, probs18, AGE_YEARS)
from maskkit.runs import read_preds, prob_matrix

DEMO = project_root() / "data" / "demo"
TINY = dict(limit=12, epochs=1, img_size=64, batch_size=16, num_threads=1)


# --- offline ImageNet weights -------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_offline_lite1_lite2_know_imagenet_photos(backbone):
    from skimage import data
    net = imagenet_offline(backbone)
    tf = timm.data.create_transform(**model_data_config(net))
    x = torch.stack([tf(Image.fromarray(data.chelsea())), tf(Image.fromarray(data.coffee()))])
    with torch.no_grad(): top3 = net(x).softmax(-1).topk(3).indices.tolist()
    assert set(top3[0]) & set(range(281, 286)) and set(top3[1]) & {967, 968}   # a cat, a cup, in the top 3
    m = build_model(backbone, pretrained="offline")                          # the backbone is the packaged file, by position
    sd = offline_state_dict(timm.create_model(backbone, num_classes=0), backbone)
    assert all(torch.equal(m.backbone.state_dict()[k], v) for k, v in sd.items())


def test_offline_is_refused_early_for_backbones_without_weights():
    assert {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"} <= set(list_offline())
    with pytest.raises(ValueError, match="tf_efficientnet_lite2"): build_model("resnet10t", pretrained="offline")
    with pytest.raises(ValueError, match="pretrained="): TrainParams(backbone="resnet18", pretrained="offline")
    with pytest.raises(ValueError, match="efficientnet-lite1"):   # the Lite1 file in a Lite0 model names the file's package
        offline_state_dict(timm.create_model("tf_efficientnet_lite0", num_classes=0), "tf_efficientnet_lite1")
    assert offline_weights_path("tf_efficientnet_lite2").is_file()


# --- sampling and the person vote ------------------------------------------------------------------------------

def test_person_sampler_takes_one_worn_image_per_person_and_epoch():
    df = load_train(ensure_demo_dataset(DEMO, verbose=False), verbose=False)
    smp = PersonSampler(df.person_id, df["mask"], wear=1, seed=0)
    seen = set()
    for epoch in range(4):
        smp.set_epoch(epoch); idx = np.array(list(smp))
        sub = df.iloc[idx]
        assert len(idx) == len(set(idx)) == 3 * df.person_id.nunique()
        assert (sub.groupby("person_id")["mask"].apply(lambda m: sorted(m.tolist())) == pd.Series([[0, 1, 2]] * df.person_id.nunique(),
                index=sorted(df.person_id.unique()))).all()
        seen |= set(sub[sub["mask"] == 0].index)
    assert len(seen) > 2 * df.person_id.nunique()          # other worn images on other epochs


def _pasted(src, lower_from, path):
    a = load_image(src).copy(); h = a.shape[0]
    a[h // 2:] = load_image(lower_from)[h // 2:h]
    Image.fromarray(a).save(path, quality=95)
    return str(path)


def test_person_groups_join_one_photo_with_other_masks_and_never_mix_persons(tmp_path):
    df = load_train(ensure_demo_dataset(DEMO, verbose=False), verbose=False)
    a, b = df.path[0], df.path[df.person_id != df.person_id[0]].iloc[0]
    copies_a = [_pasted(a, df.path[7 * k + 3], tmp_path / f"a{k}.jpg") for k in range(1, 4)]
    copies_b = [_pasted(b, df.path[7 * k + 5], tmp_path / f"b{k}.jpg") for k in range(1, 3)]
    paths = [a, *copies_a, b, *copies_b, *df.path[20:60]]
    g = person_groups(paths)
    assert len(set(g[:4])) == 1 and len(set(g[4:7])) == 1 and g[0] != g[4]
    rest = df.iloc[20:60].reset_index(drop=True)
    assert all(rest.person_id[g[7:] == k].nunique() == 1 for k in set(g[7:]))
    assert not set(g[7:]) & {g[0], g[4]}


def test_group_vote_shares_gender_and_age_and_keeps_each_mask():
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(18), 6)
    V = group_vote(P, [0, 0, 0, 1, 1, 2])
    pv, pp = part_marginals(V), part_marginals(P)
    assert np.allclose(V.sum(1), 1) and np.allclose(pv["mask"], pp["mask"])
    assert np.allclose(pv["age_bin"][:3], pp["age_bin"][:3].mean(0)) and np.allclose(pv["gender"][3:5], pp["gender"][3:5].mean(0))
    assert np.allclose(pv["age_bin"][5], pp["age_bin"][5])
    with pytest.raises(ValueError, match="probs must be"): group_vote(P[:5], [0, 0, 0, 1, 1, 2])


def test_person_vote_in_a_run_and_in_the_kfold_ensemble(tmp_path):
    out = run_kfold(TrainParams(**TINY, person_vote=True, sampler="person", ensemble={"person_vote": "auto", "part_bias": "auto"}),
                    folds=2, prefix="pv", root=tmp_path / "runs", verbose=False)
    run = out["runs"][0]
    assert "no_vote_macro_f1" in run.summary and run.config["person_vote"] and run.config["sampler"] == "person"
    oof = read_preds(run.path, "oof")
    g = person_groups(oof.path)
    assert np.allclose(group_vote(prob_matrix(oof), g), prob_matrix(oof))       # the recorded OOF is already voted
    ens = out["ensemble"]
    assert ens["person_vote"] and "oof_no_vote" in ens and Path(ens["submission"]).is_file()
    cands = ens["post"]["candidates"]                                            # the post-steps chosen out of fold
    assert len(cands) == 4 and ens["oof"]["macro_f1"] == max(c["macro_f1"] for c in cands.values())
    chosen = ens["post"]["chosen"]
    assert ens["oof"] == cands[f"person_vote={chosen['person_vote']}, part_bias={chosen['part_bias']}"]
    assert ("class_bias" in ens) == chosen["part_bias"] and "oof_before_post" in ens
    kf = Path(ens["submission"]).parent
    test, sub = pd.read_csv(kf / "test.csv"), pd.read_csv(ens["submission"])
    assert (sub.set_index("ImageID").ans.reindex(test.ImageID).to_numpy() == prob_matrix(test).argmax(1)).all()


# --- age as a distribution, EMA ------------------------------------------------------------------------------

def test_age_distribution_gives_the_band_and_is_learnt():
    torch.manual_seed(0)
    m = build_model("resnet10t", head="multi", age_dist=True, age_bounds=(30, 60))
    x = torch.randn(4, 3, 64, 64); ages = torch.tensor([22.0, 45.0, 71.0, 29.0])
    out = m(x)
    assert torch.allclose(out["age_bin"], band_log_probs(out["age_dist"], (30, 60))) and out["age_dist"].shape == (4, AGE_YEARS)
    loss = make_loss("ce", age_dist_weight=1.0, age_sigma=3.0)
    y18 = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0]), 18).float()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    first = None
    for _ in range(30):
        opt.zero_grad(); l = loss(m(x), {"y18": y18, "age": ages}); l.backward(); opt.step()
        first = first if first is not None else l.item()
    assert l.item() < first and "age_dist" in loss.last
    m.eval()
    with torch.no_grad(): band = part_marginals(probs18(m(x)))["age_bin"].argmax(1)
    assert band.tolist() == [0, 1, 2, 0]
    with pytest.raises(KeyError, match="age_dist=True"): make_loss("ce", age_dist_weight=1.0)(build_model("resnet10t")(x), {"y18": torch.eye(18)[:4], "age": ages})
    with pytest.raises(ValueError, match="age_sigma"): TrainParams(age_dist=True, age_sigma=0)


@pytest.fixture(scope="module")
def ldl_run(tmp_path_factory):
    "One tiny run with the part heads, the age distribution, EMA and drawn masks (shared by the tests below)."
    base = tmp_path_factory.mktemp("ldl")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKKIT_CACHE", str(base / "cache"))
        yield train_run(TrainParams(**TINY, head="multi", age_dist=True, ema_decay=0.9, synth_masks=1, run_name="ldl"), root=base, verbose=False)


def test_age_dist_and_ema_runs_predict_as_recorded(ldl_run):
    run = ldl_run
    assert run.config["age_dist"] and run.config["ema_decay"] == 0.9 and run.config["synth_masks"] == 1
    test = read_preds(run.path, "test")
    pred = Predictor.from_run(run.path).predict(test.path.tolist()[:8])
    assert np.abs(pred[PROB_COLS].to_numpy() - test[PROB_COLS].to_numpy()[:8]).max() < 1e-5
    ck = torch.load(run.path / "last.pt", weights_only=True)
    assert "ema" in ck
    with pytest.raises(ValueError, match="ema_decay"): TrainParams(ema_decay=1.5)


# --- real photos ----------------------------------------------------------------------------------------------

def test_mask_state_score_on_photos_with_a_whole_image_fallback(ldl_run):
    run = ldl_run
    df = load_train(DEMO, verbose=False).iloc[:14]
    sol = pd.DataFrame({"ImageID": [Path(p).parent.name + Path(p).name for p in df.path], "mask": df["mask"].to_numpy()})
    frame = pd.DataFrame({"ImageID": sol.ImageID, "path": df.path.to_numpy()})
    pred = Predictor.from_run(run.path, face={"fallback_size": 1.0}).predict(frame)
    s = score_mask_state(pred, sol)
    assert s["n"] == 14 and sum(map(sum, s["confusion"])) == 14 and s["counts"] == np.bincount(df["mask"], minlength=3).tolist()
    assert 0 <= s["mask_macro_f1"] <= 1 and set(s["by_face_method"]) <= {"face", "fallback"}
    assert np.isclose(s["mask_acc"], (pred["class"].astype(int).to_numpy() // 6 == df["mask"].to_numpy()).mean())
    with pytest.raises(ValueError, match="face settings"): Predictor.from_run(run.path, face={"margin": 0.1})


def test_part_bias_lifts_an_under_predicted_band_out_of_fold():
    from maskkit.labels import decode_label
    from maskkit.metrics import score
    old = decode_label(np.arange(18))[2] == 2
    rng = np.random.default_rng(0)
    y = rng.choice(18, 3000, p=np.where(old, 0.1 / 6, 0.9 / 12))
    z = rng.normal(0, 1, (3000, 18)); z[np.arange(3000), y] += 2.0; z[:, old] -= 1.0
    P = np.exp(z); P /= P.sum(1, keepdims=True)
    b = fit_part_bias(P, y)
    parts = b.reshape(3, 2, 3)                      # a sum of part biases: the same step between any two age bands
    assert np.allclose(parts[..., 2] - parts[..., 0], (parts[..., 2] - parts[..., 0])[0, 0]) and b[old].mean() > b[~old].mean()
    f1 = lambda Q: score(y, Q.argmax(1))["macro_f1"]
    assert f1(crossfit_part_bias(P, y, np.arange(3000) % 3)) > f1(P)
    assert np.allclose(apply_class_bias(P, np.zeros(18)), P)


# --- mask synthesis ------------------------------------------------------------------------------------------

def test_synth_masks_join_training_persons_only(tmp_path):
    from maskkit.experiment import load_fold
    from maskkit.synth import synth_mask, face_frame
    p = TrainParams(**TINY, synth_masks=2)
    fold = load_fold(p, verbose=False)
    syn = fold.train[fold.train.stem.str.startswith("synth")]
    assert len(syn) > 0 and set(syn.person_id) <= set(fold.train.person_id) and not set(syn.person_id) & set(fold.valid.person_id)
    assert not fold.valid.stem.str.startswith("synth").any() and set(syn["mask"]) <= {0, 1}
    assert (syn.groupby("person_id").size() == 2).all() and all(Path(x).is_file() for x in syn.path)
    assert (syn.fold != p.fold).all() and len(fold.df) == len(load_fold(p.replace(synth_masks=0), verbose=False).df) + len(syn)
    # a drawn mask changes the lower face and leaves the eyes
    img = np.full((200, 200, 3), 128, np.uint8)
    lm = np.array([[70, 80], [130, 80], [100, 115], [78, 145], [122, 145]], float)
    out = synth_mask(img, lm, "wear", "kf94", colour=(200, 60, 60), rng=np.random.default_rng(0))
    assert np.abs(out[140, 100].astype(int) - 128).sum() > 60 and np.abs(out[80, 70].astype(int) - 128).sum() < 10
    with pytest.raises(ValueError, match="uint8"): synth_mask(img.astype(float), lm)
