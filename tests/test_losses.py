"Tests for maskkit.losses: each loss against a hand/numpy computation, part targets, weights, make_loss."
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskkit.losses import (part_targets, smooth_targets, soft_ce, focal_loss, soft_f1_loss, age_loss,
                            class_weights_from_counts, part_class_weights, make_loss, MaskLoss, as_targets)
from maskkit.models import probs18, log_probs18, AGE_SCALE


def _np_logsoftmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _onehot(labels, k=18): return F.one_hot(torch.as_tensor(labels), k).float()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 18, generator=g) * 2, _onehot([0, 3, 7, 11, 17, 5])


def test_ce_uniform_logits_is_log18():
    assert math.isclose(soft_ce(torch.zeros(5, 18), _onehot([0, 1, 2, 3, 17])).item(), math.log(18), rel_tol=1e-6)


def test_ce_matches_numpy_and_torch(batch):
    lg, y = batch
    want = -(y.numpy() * _np_logsoftmax(lg.numpy().astype(np.float64))).sum(1).mean()
    assert math.isclose(soft_ce(lg, y).item(), want, rel_tol=1e-5)
    assert torch.allclose(soft_ce(lg, y), F.cross_entropy(lg, y.argmax(1)))


def test_ce_soft_targets_are_convex_combination(batch):
    lg, _ = batch
    ya, yb = _onehot([1, 2, 3, 4, 5, 6]), _onehot([9, 9, 0, 17, 12, 6])
    lam = 0.3
    mixed = soft_ce(lg, lam * ya + (1 - lam) * yb)
    assert torch.allclose(mixed, lam * soft_ce(lg, ya) + (1 - lam) * soft_ce(lg, yb), atol=1e-6)


def test_label_smoothing_known_value():
    # logits [log 2, 0] -> p = [2/3, 1/3]; eps 0.2 on 2 classes -> y = [0.9, 0.1]
    lg, y = torch.tensor([[math.log(2), 0.0]]), torch.tensor([[1.0, 0.0]])
    want = -(0.9 * math.log(2 / 3) + 0.1 * math.log(1 / 3))
    assert math.isclose(soft_ce(lg, y, label_smoothing=0.2).item(), want, rel_tol=1e-6)
    assert torch.allclose(smooth_targets(y, 0.2), torch.tensor([[0.9, 0.1]]))
    lg18, y18 = torch.randn(4, 18), _onehot([0, 4, 8, 12])
    assert torch.allclose(soft_ce(lg18, y18, label_smoothing=0.1),
                          F.cross_entropy(lg18, y18.argmax(1), label_smoothing=0.1))


def test_focal_gamma0_is_ce_and_downweights_easy(batch):
    lg, y = batch
    assert torch.allclose(focal_loss(lg, y, gamma=0.0), soft_ce(lg, y))
    easy, hard = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0]])
    # ratio focal/CE is (1-p)^gamma: far smaller for the easy (confident, right) example
    p_easy = F.softmax(easy, -1)[0, 0].item()
    assert math.isclose((focal_loss(easy, t, 2.0) / soft_ce(easy, t)).item(), (1 - p_easy) ** 2, rel_tol=1e-5)
    assert (focal_loss(easy, t, 2.0) / soft_ce(easy, t)) < (focal_loss(hard, t, 2.0) / soft_ce(hard, t))


def test_focal_matches_numpy_soft_targets(batch):
    lg, _ = batch
    y = 0.6 * _onehot([1, 2, 3, 4, 5, 6]) + 0.4 * _onehot([7, 8, 9, 10, 11, 12])
    logp = _np_logsoftmax(lg.numpy().astype(np.float64))
    want = (-(1 - np.exp(logp)) ** 1.5 * y.numpy() * logp).sum(1).mean()
    assert math.isclose(focal_loss(lg, y, gamma=1.5).item(), want, rel_tol=1e-5)


def test_soft_f1_perfect_and_wrong():
    y = torch.eye(18)
    assert soft_f1_loss(y * 30, y).item() < 1e-3
    assert soft_f1_loss(y.roll(1, 0) * 30, y).item() > 0.5
    assert soft_f1_loss(torch.zeros(18, 18), y).item() > 0.5  # uniform guesses are poor too


def test_soft_f1_matches_numpy(batch):
    lg, y = batch
    p = np.exp(_np_logsoftmax(lg.numpy().astype(np.float64))); t = y.numpy()
    tp, fp, fn = (p * t).sum(0), (p * (1 - t)).sum(0), ((1 - p) * t).sum(0)
    want = 1 - (2 * tp / (2 * tp + fp + fn + 1e-7)).mean()
    assert math.isclose(soft_f1_loss(lg, y).item(), want, rel_tol=1e-5)


def test_class_weights_from_counts():
    w = class_weights_from_counts([100, 50, 25, 25])
    assert math.isclose(w.mean().item(), 1.0, rel_tol=1e-6)
    assert torch.allclose(w / w[0], torch.tensor([1.0, 2.0, 4.0, 4.0]))
    w5 = class_weights_from_counts([100, 25], power=0.5)
    assert math.isclose((w5[1] / w5[0]).item(), 2.0, rel_tol=1e-6)
    assert torch.isfinite(class_weights_from_counts([0, 10])).all()
    with pytest.raises(ValueError):
        class_weights_from_counts([[1, 2]])


def test_class_weights_effect():
    lg = torch.zeros(2, 3)
    y = _onehot([0, 1], 3)
    w = torch.tensor([3.0, 1.0, 1.0])
    # uniform logits: each example costs log 3 times its class weight
    assert math.isclose(soft_ce(lg, y, weight=w).item(), (3 + 1) / 2 * math.log(3), rel_tol=1e-6)
    assert torch.allclose(focal_loss(lg, y, gamma=0.0, weight=w), soft_ce(lg, y, weight=w))
    lg2 = torch.randn(5, 3)
    y2 = _onehot([0, 1, 2, 2, 0], 3)
    assert torch.allclose(soft_ce(lg2, y2, weight=w), F.cross_entropy(lg2, y2, weight=w))
    with pytest.raises(ValueError, match="class weights"):
        soft_ce(lg, y, weight=torch.ones(4))


def test_part_targets_marginals():
    y = 0.25 * _onehot([1 * 6 + 0 * 3 + 2]) + 0.75 * _onehot([2 * 6 + 1 * 3 + 0])
    pt = part_targets(y)
    assert torch.allclose(pt["mask"], torch.tensor([[0.0, 0.25, 0.75]]))
    assert torch.allclose(pt["gender"], torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(pt["age_bin"], torch.tensor([[0.75, 0.0, 0.25]]))
    labels = torch.arange(18)
    pt = part_targets(_onehot(labels))
    assert pt["mask"].argmax(1).tolist() == (labels // 6).tolist()
    assert pt["gender"].argmax(1).tolist() == (labels // 3 % 2).tolist()
    assert pt["age_bin"].argmax(1).tolist() == (labels % 3).tolist()
    with pytest.raises(ValueError):
        part_targets(torch.zeros(2, 17))


def _multi(b=6, seed=1, age=False):
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(b, n, generator=g, requires_grad=True) for k, n in [("mask", 3), ("gender", 2), ("age_bin", 3)]}
    if age: out["age"] = (40 + 15 * torch.randn(b, generator=g)).requires_grad_()
    return out


def test_multihead_parts_and_weights():
    out, y = _multi(), _onehot([0, 5, 7, 11, 13, 17])
    pt = part_targets(y)
    lf = make_loss("ce", part_weights=(2.0, 0.5, 1.0))
    total = lf(out, {"y18": y})
    want = 2.0 * soft_ce(out["mask"], pt["mask"]) + 0.5 * soft_ce(out["gender"], pt["gender"]) + soft_ce(out["age_bin"], pt["age_bin"])
    assert torch.allclose(total, want)
    assert math.isclose(lf.last["gender"], soft_ce(out["gender"], pt["gender"]).item(), rel_tol=1e-6)


def test_multihead_joint_uses_log_probs18():
    out, y = _multi(), _onehot([0, 5, 7, 11, 13, 17])
    lf = make_loss({"ce": 1.0}, joint_weight=1.0, part_weights=(0, 0, 0))
    want = -(y * probs18(out).log()).sum(1).mean()
    assert torch.allclose(lf(out, {"y18": y}), want, atol=1e-6)
    # for one-hot targets the joint CE equals the sum of the part CEs (log p18 = sum of part log-probs)
    pt = part_targets(y)
    assert torch.allclose(want, sum(soft_ce(out[k], pt[k]) for k in pt), atol=1e-5)


def test_multihead_class_weights():
    out, y = _multi(), _onehot([0, 5, 7, 11, 13, 17])
    cw = {"mask": torch.tensor([1.0, 5.0, 1.0])}
    plain, weighted = make_loss("ce")(out, {"y18": y}), make_loss("ce", class_weights=cw)(out, {"y18": y})
    pt = part_targets(y)
    assert torch.allclose(weighted - plain, soft_ce(out["mask"], pt["mask"], weight=cw["mask"]) - soft_ce(out["mask"], pt["mask"]))
    with pytest.raises(ValueError, match="dict"):
        make_loss("ce", class_weights=torch.ones(18))(out, {"y18": y})
    assert set(part_class_weights(np.arange(1, 19))) == {"mask", "gender", "age_bin"}
    make_loss("ce", class_weights=part_class_weights(np.arange(1, 19)))(out, {"y18": y})


def test_age_regression_scaled():
    pred, age = torch.tensor([30.0, 60.0]), torch.tensor([20.0, 60.0])
    assert math.isclose(age_loss(pred, age, "mse").item(), ((10 / AGE_SCALE) ** 2) / 2, rel_tol=1e-5)
    assert math.isclose(age_loss(pred, age, "l1").item(), (10 / AGE_SCALE) / 2, rel_tol=1e-5)
    assert torch.allclose(age_loss(pred, age, "smooth_l1", beta=0.1),
                          F.smooth_l1_loss(pred / AGE_SCALE, age / AGE_SCALE, beta=0.1))
    out, y = _multi(age=True), _onehot([0, 5, 7, 11, 13, 17])
    ages = torch.tensor([20.0, 35, 70, 25, 50, 64])
    lf = make_loss("ce", age_weight=2.0)
    total = lf(out, {"y18": y, "age": ages})
    assert math.isclose(total.item(), lf.last["ce"] + 2.0 * age_loss(out["age"], ages).item(), rel_tol=1e-5)
    with pytest.raises(KeyError, match="age_regression"):
        lf({"logits": torch.randn(6, 18)}, {"y18": y, "age": ages})
    with pytest.raises(ValueError):
        make_loss("ce", age_loss="huber")


def test_gradients_flow():
    lg = torch.randn(6, 18, requires_grad=True)
    y = _onehot([0, 1, 2, 3, 4, 5])
    make_loss({"ce": 1, "focal": 1, "f1": 1}, label_smoothing=0.1)({"logits": lg}, {"y18": y}).backward()
    assert torch.isfinite(lg.grad).all() and lg.grad.abs().sum() > 0
    out = _multi(age=True)
    make_loss({"focal": 1.0, "f1": 0.5}, age_weight=1.0, joint_weight=0.5)(out, {"y18": y, "age": torch.full((6,), 40.0)}).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in out.values())


def test_make_loss_weighted_sum_equals_components(batch):
    lg, y = batch
    lf = make_loss({"f1": 0.4, "focal": 0.6, "ce": 0.25}, focal_gamma=2.0, label_smoothing=0.05)
    total = lf({"logits": lg}, {"y18": y}).item()
    l = lf.last
    assert math.isclose(total, 0.4 * l["f1"] + 0.6 * l["focal"] + 0.25 * l["ce"], rel_tol=1e-6)
    assert math.isclose(l["focal"], focal_loss(lg, y, 2.0, label_smoothing=0.05).item(), rel_tol=1e-6)
    assert math.isclose(l["f1"], soft_f1_loss(lg, y).item(), rel_tol=1e-6)


def test_make_loss_specs_and_errors(batch):
    lg, y = batch
    a = make_loss({"ce": 1.0, "label_smoothing": 0.1})({"logits": lg}, {"y18": y})
    b = make_loss("ce", label_smoothing=0.1)({"logits": lg}, {"y18": y})
    assert torch.allclose(a, b) and isinstance(make_loss(), MaskLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss({"dice": 1.0})
    with pytest.raises(ValueError, match="twice"):
        make_loss({"ce": 1.0, "label_smoothing": 0.1}, label_smoothing=0.2)
    with pytest.raises(ValueError, match="18 entries"):
        make_loss("ce", class_weights=[1.0, 2.0])
    # targets as integer labels are one-hot encoded
    assert torch.allclose(make_loss("ce")({"logits": lg}, {"label": y.argmax(1)}), soft_ce(lg, y))
    assert as_targets(y.argmax(1))["y18"].shape == (6, 18)


def test_loss_under_half_precision(batch):
    lg, y = batch
    l = make_loss({"ce": 1, "f1": 1})({"logits": lg.bfloat16()}, {"y18": y})
    assert l.dtype == torch.float32 and torch.isfinite(l)
