import json, numpy as np, pandas as pd, pytest, torch, torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from maskkit.train import (TrainConfig, seed_everything, make_optimizer, make_scheduler, train_one_epoch, predict,
                           evaluate, fit, hflip)
from maskkit import runs

NOISY = ("seconds", "images_per_s")


class ToyDS(Dataset):
    def __init__(self, n=96, seed=0, labelled=True):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 18
        self.x = torch.randn(n, 3, 8, 8, generator=g) * 0.5
        self.x[torch.arange(n), self.y % 3, self.y // 3, :] += 2.0
        self.labelled = labelled
    def __len__(self): return len(self.y)
    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i] if self.labelled else torch.tensor(-1),
                "age": torch.tensor(20.0), "index": torch.tensor(i)}


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.1), torch.nn.Linear(192, 32),
                                       torch.nn.ReLU(), torch.nn.Linear(32, 18))
    def forward(self, x): return {"logits": self.net(x)}


def soft_ce(out, t): return -(t["y18"] * F.log_softmax(out["logits"], -1)).sum(1).mean()


def loaders(bs=16):
    return DataLoader(ToyDS(96, 0), bs, shuffle=True), DataLoader(ToyDS(48, 1), bs)


def run(run_dir, loss_fn=soft_ce, model_seed=0, mix=None, **kw):
    seed_everything(model_seed)
    cfg = TrainConfig(**{"epochs": 2, "lr": 3e-3, "progress": False, **kw})
    return fit(Toy(), *loaders(), loss_fn, cfg, run_dir, mix=mix)


def clean(h): return h[[c for c in h.columns if c not in NOISY]]


def test_same_seed_same_metrics_different_seed_differs(tmp_path):
    a = run(tmp_path / "a", seed=1)["history"]
    b = run(tmp_path / "b", seed=1)["history"]
    c = run(tmp_path / "c", seed=2, model_seed=5)["history"]
    pd.testing.assert_frame_equal(clean(a), clean(b))
    assert not np.allclose(a.train_loss, c.train_loss)


class Killed(Exception): pass


def killing(after):
    n = {"calls": 0}
    def f(out, t):
        n["calls"] += 1
        if n["calls"] > after: raise Killed()
        return soft_ce(out, t)
    return f


class NoiseMix:
    "A batch mix with its own torch generator (resume must restore it)."
    def __init__(self): self.g = torch.Generator().manual_seed(7)
    def __call__(self, x, y18, age):
        lam = torch.rand(len(x), generator=self.g)[:, None]
        perm = torch.randperm(len(x), generator=self.g)
        return x + 0.1 * torch.randn(x.shape, generator=self.g), lam * y18 + (1 - lam) * y18[perm], age


@pytest.mark.parametrize("kw", [dict(optimizer="adamw", scheduler="cosine", warmup_epochs=1, weight_decay=0.01),
                                dict(optimizer="sgd", scheduler="onecycle", accum_steps=2, grad_clip=1.0)])
def test_resume_after_kill_matches_uninterrupted(tmp_path, kw):
    full = run(tmp_path / "full", epochs=3, mix=NoiseMix(), **kw)
    with pytest.raises(Killed):  # 6 train + 3 valid batches per epoch: dies 2 batches into epoch 1
        run(tmp_path / "k", killing(6 + 3 + 2), epochs=3, mix=NoiseMix(), **kw)
    assert len(pd.read_csv(tmp_path / "k" / "metrics.csv")) == 1
    resumed = run(tmp_path / "k", epochs=3, mix=NoiseMix(), **kw)
    pd.testing.assert_frame_equal(clean(full["history"]), clean(resumed["history"]))
    assert full["best_epoch"] == resumed["best_epoch"] and full["best"] == resumed["best"]
    m = pd.read_csv(tmp_path / "k" / "metrics.csv")
    assert m.epoch.tolist() == [0, 1, 2]
    # resume=False starts again from scratch
    again = run(tmp_path / "k", epochs=1, resume=False, mix=NoiseMix(), **kw)
    assert len(again["history"]) == 1 and len(pd.read_csv(tmp_path / "k" / "metrics.csv")) == 1


def test_best_checkpoint_and_early_stopping(tmp_path):
    r = run(tmp_path / "r", epochs=3)
    h = r["history"]
    assert r["best"] == h.valid_macro_f1.max() and r["best_epoch"] == int(h.valid_macro_f1.idxmax())
    ck = torch.load(tmp_path / "r" / "best.pt", weights_only=False)
    assert ck["epoch"] == r["best_epoch"] and ck["score"] == r["best"]
    es = run(tmp_path / "es", epochs=8, lr=0.0, patience=2)
    assert es["stopped_early"] and len(es["history"]) == 3
    # minimising loss as monitor
    lo = run(tmp_path / "lo", epochs=3, monitor="loss")
    assert lo["best"] == lo["history"].valid_loss.min()


def test_train_on_all_without_valid_loader(tmp_path):
    seed_everything(0)
    r = fit(Toy(), loaders()[0], None, soft_ce, TrainConfig(epochs=2, patience=1, progress=False), tmp_path / "all")
    assert r["best_epoch"] == 1 and not r["stopped_early"] and "valid_macro_f1" not in r["history"]
    assert torch.load(tmp_path / "all" / "best.pt", weights_only=False)["epoch"] == 1


def test_gradient_accumulation_matches_big_batch():
    def one_step(bs, accum):
        seed_everything(0)
        m = Toy(); m.net[1].p = 0.0
        cfg = TrainConfig(lr=0.1, optimizer="sgd", momentum=0.0, accum_steps=accum, progress=False)
        opt = make_optimizer(m, cfg)
        dl = DataLoader(ToyDS(32, 0), bs, shuffle=False)
        train_one_epoch(m, dl, soft_ce, opt, cfg=cfg)
        return torch.cat([p.detach().flatten() for p in m.parameters()])
    a, b = one_step(32, 1), one_step(8, 4)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, one_step(8, 1), atol=1e-4)


def test_predict_tta_and_evaluate():
    seed_everything(0)
    m = Toy()
    dl = loaders()[1]
    p, idx = predict(m, dl, progress=False)
    assert p.shape == (48, 18) and np.allclose(p.sum(1), 1, atol=1e-5) and (idx == np.arange(48)).all()
    p2, _ = predict(m, dl, tta=[None, hflip], progress=False)
    pf, _ = predict(m, DataLoader([{**b, "image": b["image"].flip(-1)} for b in ToyDS(48, 1)], 16), progress=False)
    assert np.allclose(p2, (p + pf) / 2, atol=1e-6)
    ev = evaluate(m, dl, soft_ce, progress=False)
    assert ev["accuracy"] == pytest.approx((p.argmax(1) == ToyDS(48, 1).y.numpy()).mean())
    unl = DataLoader(ToyDS(20, 2, labelled=False), 8)
    assert predict(m, unl, progress=False)[0].shape == (20, 18)
    with pytest.raises(ValueError, match="known labels"): evaluate(m, unl, soft_ce, progress=False)


def test_bf16_runs_on_cpu_and_fp16_is_refused(tmp_path):
    r = run(tmp_path / "bf", epochs=1, amp="bf16", channels_last=True)
    assert np.isfinite(r["history"].train_loss).all()
    with pytest.raises(ValueError, match="fp16"): run(tmp_path / "fp", epochs=1, amp="fp16", device="cpu")


def test_optimizers_and_schedules():
    p = [torch.nn.Parameter(torch.zeros(2))]
    for name in ("adam", "adamw", "sgd", "madgrad"):
        pytest.importorskip("madgrad") if name == "madgrad" else None
        assert make_optimizer(p, TrainConfig(optimizer=name)).param_groups[0]["lr"] == 1e-3
    cfg = TrainConfig(lr=1.0, epochs=3, scheduler="step", step_size=1, gamma=0.5, warmup_epochs=1)
    opt = make_optimizer(p, cfg); sch = make_scheduler(opt, cfg, steps_per_epoch=4)
    lrs = []
    for _ in range(12): lrs.append(opt.param_groups[0]["lr"]); opt.step(); sch.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and lrs[4:8] == pytest.approx([0.5] * 4)
    assert lrs[8:] == pytest.approx([0.25] * 4)
    with pytest.raises(ValueError, match="optimizer"): TrainConfig(optimizer="lion")


def test_bad_batches_raise_clearly():
    seed_everything(0)
    m = Toy(); cfg = TrainConfig(progress=False)
    with pytest.raises(TypeError, match="dicts with 'image'"):
        train_one_epoch(m, [(torch.zeros(2, 3, 8, 8), torch.zeros(2))], soft_ce, make_optimizer(m, cfg), cfg=cfg)


def test_run_records_and_compare(tmp_path):
    run = runs.Run.create("r1", {"backbone": "toy", "lr": 0.1, "img_size": (8, 8)}, root=tmp_path)
    rd = run.path
    assert json.loads((rd / "config.json").read_text())["img_size"] == [8, 8]
    assert set(json.loads((rd / "git.json").read_text())) >= {"commit", "dirty"}
    res = fit(Toy(), *loaders(), soft_ce, TrainConfig(epochs=2, progress=False), rd)
    probs, idx = predict(Toy(), loaders()[1], progress=False)
    df = pd.DataFrame({"path": [f"p{i}" for i in range(48)], "label": ToyDS(48, 1).y.numpy()})
    oof = pd.read_csv(run.save_predictions(df, probs, "oof"))
    assert (oof.pred == probs.argmax(1)).all() and np.allclose(oof.filter(like="prob_").values, probs, atol=1e-6)
    test = df.drop(columns="label").assign(ImageID=[f"{i}.jpg" for i in range(48)])
    run.save_predictions(test, probs, "test")
    assert not (rd / "submission.csv").exists()          # a submission is only written through the validator
    run.write_submission(pd.DataFrame({"ImageID": test.ImageID, "ans": probs.argmax(1)}), test[["ImageID"]])
    assert pd.read_csv(rd / "submission.csv").columns.tolist() == ["ImageID", "ans"]
    with pytest.raises(ValueError, match="rows"): run.save_predictions(df.iloc[:5], probs)
    s = run.report(df.label, oof.pred)
    assert s["accuracy"] == pytest.approx((oof.pred == df.label).mean()) and (rd / "confusion.png").exists()
    run.release()
    with runs.Run.create("r2", {"backbone": "toy2"}, root=tmp_path) as r2:
        runs.log_epoch(r2.path, {"epoch": 0, "valid_macro_f1": 2.0, "valid_accuracy": 1.0, "seconds": 120})
    cmp = runs.compare(tmp_path)
    assert cmp.name.tolist() == ["r2", "r1"] and cmp.loc[0, "minutes"] == 2.0
    assert cmp.loc[1, "macro_f1"] == res["best"] and cmp.loc[1, "best_epoch"] == res["best_epoch"]
    loaded = runs.load_run(rd)
    assert loaded["config"]["backbone"] == "toy" and len(loaded["metrics"]) == 2
    fig = runs.plot_curves(["r1", "r2"], ["loss", "macro_f1"], root=tmp_path)
    assert len(fig.axes) == 2
    with pytest.raises(FileNotFoundError, match="not a run folder"): runs.load_run(tmp_path / "nope")


def test_checkpoints_load_with_weights_only(tmp_path):
    "best.pt and last.pt hold only tensors and plain values (numpy's RNG state as a tensor), so resume is safe."
    fit(Toy(), *loaders(), soft_ce, TrainConfig(epochs=1, progress=False), tmp_path)
    for f in ("best.pt", "last.pt"): torch.load(tmp_path / f, weights_only=True)


def test_tensorboard_gets_step_losses_and_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tl, vl = loaders()
    fit(Toy(), tl, vl, soft_ce, TrainConfig(epochs=2, progress=False), tmp_path, hparams={"lr": 1e-3, "augment": ["hflip"], "x": None})
    ev = EventAccumulator(str(tmp_path / "tb")); ev.Reload()
    steps = [e.step for e in ev.Scalars("train/step_loss")]
    assert steps == list(range(2 * len(tl)))                            # one point per batch
    assert [e.step for e in ev.Scalars("valid/macro_f1")] == [len(tl), 2 * len(tl)]   # epoch ends, on the same axis
    assert ev.PluginTagToContent("hparams")                             # the hparams plugin wrote the run's parameters
