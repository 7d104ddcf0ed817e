"Tests for maskkit.models: heads, probs18, weights (offline Lite0, local files), data config, Grad-CAM layer."
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import timm

from maskkit.models import (PARTS, AGE_SCALE, MaskNet, build_model, probs18, log_probs18, lite0_weights_path,
                            lite0_state_dict, read_state_dict, imagenet_lite0, model_data_config, target_layer,
                            param_groups, set_backbone_trainable)

X = torch.randn(2, 3, 48, 48)


def _shapes(out): return {k: tuple(v.shape) for k, v in out.items()}


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050", "tf_efficientnet_lite0"])
def test_output_contract(name):
    m = build_model(name).eval()
    assert _shapes(m(X)) == {"logits": (2, 18)}
    m = build_model(name, head="multi", age_regression=True, hidden=8).eval()
    assert _shapes(m(X)) == {"mask": (2, 3), "gender": (2, 2), "age_bin": (2, 3), "age": (2,)}


def test_hidden_layer_and_dropout():
    m = build_model("resnet10t", hidden=16, drop_rate=0.5)
    lin, relu, drop = m.neck
    assert isinstance(lin, nn.Linear) and lin.out_features == 16 and isinstance(relu, nn.ReLU) and drop.p == 0.5
    assert m.heads["logits"].in_features == 16
    m.eval()
    assert torch.equal(m(X)["logits"], m(X)["logits"])  # eval: no dropout
    m.train()
    assert not torch.equal(m(X)["logits"], m(X)["logits"])  # train: dropout active


def test_age_head_scale_and_grad():
    m = build_model("resnet10t", head="multi", age_regression=True)
    with torch.no_grad():
        m.age_head.weight.zero_(); m.age_head.bias.fill_(0.35)
    assert torch.allclose(m.eval()(X)["age"], torch.full((2,), 0.35 * AGE_SCALE))
    m.train()
    out = m(X)
    sum(v.float().sum() for v in out.values()).backward()
    assert m.backbone.conv1[0].weight.grad.abs().sum() > 0


def test_bad_head_and_in_chans():
    with pytest.raises(ValueError, match="head"):
        build_model("resnet10t", head="double")
    m = build_model("resnet10t", in_chans=1).eval()
    assert m(torch.randn(1, 1, 32, 32))["logits"].shape == (1, 18)


def test_probs18_combination_by_hand():
    lo = {"mask": torch.tensor([[0.2, -1.0, 2.0], [0., 0., 0.]]), "gender": torch.tensor([[1.5, 0.1], [0., 3.]]),
          "age_bin": torch.tensor([[0.3, 0.0, -2.0], [1., 2., 3.]])}
    p = probs18(lo)
    assert p.shape == (2, 18)
    assert torch.allclose(p.sum(1), torch.ones(2))
    sm = {k: np.exp(v.numpy()) / np.exp(v.numpy()).sum(1, keepdims=True) for k, v in lo.items()}
    for b in range(2):
        for m in range(3):
            for g in range(2):
                for a in range(3):
                    want = sm["mask"][b, m] * sm["gender"][b, g] * sm["age_bin"][b, a]
                    assert math.isclose(p[b, m * 6 + g * 3 + a].item(), want, rel_tol=1e-5)
    # the argmax of the product is the combination of the part argmaxes
    best = [int(np.argmax(sm[k][b])) for b in range(2) for k in PARTS]
    assert p.argmax(1).tolist() == [best[0] * 6 + best[1] * 3 + best[2], best[3] * 6 + best[4] * 3 + best[5]]
    assert torch.allclose(log_probs18(lo).exp(), p)


def test_probs18_single_and_errors():
    lg = torch.randn(3, 18)
    assert torch.allclose(probs18({"logits": lg}), lg.softmax(-1))
    assert torch.allclose(probs18(lg), lg.softmax(-1))
    with pytest.raises(KeyError, match="gender"):
        probs18({"mask": torch.zeros(1, 3), "age_bin": torch.zeros(1, 3)})


def test_offline_weights_match_package_by_position():
    m = build_model("tf_efficientnet_lite0", pretrained="offline")
    src = [v for k, v in read_state_dict(lite0_weights_path()).items() if not k.endswith("num_batches_tracked")]
    dst = [v for k, v in m.backbone.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(src) == 247 and len(dst) == 245  # the backbone has no ImageNet classifier
    assert all(torch.equal(a, b) for a, b in zip(src, dst))
    # a second model starts from the same weights but its heads are fresh
    assert not torch.equal(build_model("tf_efficientnet_lite0").backbone.conv_stem.weight, m.backbone.conv_stem.weight)


def test_offline_only_for_lite0():
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        build_model("resnet10t", pretrained="offline")
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        lite0_state_dict(timm.create_model("resnet10t", num_classes=0))


def test_offline_mapping_shape_error_names_file(tmp_path):
    sd = read_state_dict(lite0_weights_path())
    k = next(iter(sd))
    sd[k] = torch.zeros(3, 3, 3, 3)  # wrong stem shape
    f = tmp_path / "broken_lite0.pth"
    torch.save(sd, f)
    with pytest.raises(ValueError, match="broken_lite0.pth.*_conv_stem.weight"):
        lite0_state_dict(timm.create_model("tf_efficientnet_lite0", num_classes=0), f)


def test_imagenet_lite0_recognises_real_photos():
    from PIL import Image
    from skimage import data
    net = imagenet_lite0()
    cfg = model_data_config(net)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    tf = timm.data.create_transform(**cfg)
    x = torch.stack([tf(Image.fromarray(data.chelsea())), tf(Image.fromarray(data.coffee()))])
    with torch.no_grad():
        p = net(x).softmax(-1)
    cat, cup = list(range(281, 286)), [967, 968]
    assert p[0].argmax().item() in cat and p[0, cat].sum() > 0.5
    assert p[1].argmax().item() in cup and p[1, cup].sum() > 0.5
    assert set(cat[:3]) & set(p[0].topk(5).indices.tolist())


def test_local_checkpoint_roundtrip(tmp_path):
    m = build_model("resnet10t", head="multi", age_regression=True)
    f = tmp_path / "run.pth"
    torch.save({"model": m.state_dict(), "epoch": 2, "metrics": {"f1": 0.5}}, f)
    m2 = build_model("resnet10t", head="multi", age_regression=True, pretrained=f)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    # a bare backbone in safetensors
    h = tmp_path / "bb.safetensors"
    from safetensors.torch import save_file
    save_file(m.backbone.state_dict(), str(h))
    assert torch.equal(build_model("resnet10t", pretrained=h).backbone.layer4[0].conv1.weight,
                       m.backbone.layer4[0].conv1.weight)


def test_local_module_prefix(tmp_path):
    m = build_model("resnet10t")
    g = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, g)
    m2 = build_model("resnet10t", pretrained=g)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_local_full_timm_model_drops_imagenet_classifier(tmp_path):
    full = timm.create_model("resnet10t", num_classes=1000)
    f = tmp_path / "imagenet.pth"
    torch.save(full.state_dict(), f)
    m = build_model("resnet10t", pretrained=f)
    assert torch.equal(m.backbone.conv1[0].weight, full.conv1[0].weight)


def test_local_heads_of_other_shape_warn(tmp_path):
    multi = build_model("resnet10t", head="multi")
    f = tmp_path / "multi.pth"
    torch.save(multi.state_dict(), f)
    with pytest.warns(UserWarning, match="head weights not loaded"):
        single = build_model("resnet10t", pretrained=f)
    assert torch.equal(single.backbone.conv1[0].weight, multi.backbone.conv1[0].weight)


def test_local_mismatch_errors_name_file(tmp_path):
    f = tmp_path / "other_arch.pth"
    torch.save({"model": build_model("mobilenetv3_small_050").state_dict()}, f)
    with pytest.raises(ValueError, match="other_arch.pth.*missing keys"):
        build_model("resnet10t", pretrained=f)
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        build_model("resnet10t", pretrained=bad)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model("resnet10t", pretrained=tmp_path / "nowhere.pth")
    wide = tmp_path / "wide.pth"
    sd = build_model("resnet10t").backbone.state_dict()
    sd["conv1.0.weight"] = torch.zeros(24, 3, 5, 5)
    torch.save(sd, wide)
    with pytest.raises(ValueError, match="wide.pth.*shape mismatch.*conv1.0.weight"):
        build_model("resnet10t", pretrained=wide)


def test_model_data_config():
    assert model_data_config(build_model("tf_efficientnet_lite0"))["mean"] == (0.5, 0.5, 0.5)
    cfg = model_data_config("resnet10t")
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert {"input_size", "interpolation", "crop_pct"} <= set(cfg)


@pytest.mark.parametrize("name,attr", [("tf_efficientnet_lite0", "conv_head"), ("resnet10t", "layer4"),
                                       ("mobilenetv3_small_050", None), ("convnext_atto", None)])
def test_target_layer_gives_spatial_maps(name, attr):
    m = build_model(name).eval()
    layer = target_layer(m)
    if attr: assert layer is getattr(m.backbone, attr)
    seen = []
    hook = layer.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    with torch.no_grad(): m(torch.randn(1, 3, 64, 64))
    hook.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][-1] > 1  # a (B, C, h, w) map, before pooling


def test_target_layer_vit_not_implemented():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=1)
    with pytest.raises(NotImplementedError, match="transformer"):
        target_layer(vit)


def test_param_groups():
    m = build_model("resnet10t", head="multi", hidden=8, age_regression=True)
    g = param_groups(m, 1e-3, head_lr_mult=10)
    assert [x["name"] for x in g] == ["backbone", "head"] and [x["lr"] for x in g] == [1e-3, 1e-2]
    ids = [id(p) for x in g for p in x["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in m.parameters()}
    set_backbone_trainable(m, False)
    g = param_groups(m, 1e-3)
    assert g[0]["params"] == [] and len(g[1]["params"]) > 0
    torch.optim.SGD(g, lr=1e-3)  # accepted by an optimiser


class _Config:  # a non-tensor object in a checkpoint (needs weights_only=False)
    lr = 1e-3


def test_checkpoint_with_objects_loads_with_warning(tmp_path):
    m = build_model("resnet10t")
    f = tmp_path / "with_cfg.pth"
    torch.save({"model": m.state_dict(), "cfg": _Config()}, f)
    with pytest.warns(UserWarning, match="with_cfg.pth.*weights_only=False"):
        m2 = build_model("resnet10t", pretrained=f)
    assert torch.equal(m2.heads["logits"].weight, m.heads["logits"].weight)


def test_logits18_wrapper():
    from maskkit.models import Logits18
    m = build_model("resnet10t", head="multi", age_regression=True).eval()
    w = Logits18(m)
    with torch.no_grad():
        out = w(X)
    assert out.shape == (2, 18) and torch.allclose(out.softmax(-1), probs18(m(X)), atol=1e-6)


def test_hub_failure_explains_offline_options(monkeypatch):
    import maskkit.models as mm
    real = timm.create_model
    def no_network(*a, **k):
        if k.get("pretrained"): raise OSError("Name or service not known")
        return real(*a, **k)
    monkeypatch.setattr(mm.timm, "create_model", no_network)
    with pytest.raises(RuntimeError, match="pretrained='offline'"):
        build_model("resnet10t", pretrained=True)
