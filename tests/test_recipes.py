"Behaviour of maskkit.recipes: presets as TrainParams, what the user passes wins, CPU versions, and that each one runs."
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

import maskkit.recipes as R
from maskkit.data import project_root
from maskkit.experiment import TrainParams
from maskkit.recipes import RECIPES, POST_KEYS, preset, scale_down, uncommented_lines


def _other(v):
    "A value of the same kind that differs from `v`."
    if isinstance(v, bool): return not v
    if isinstance(v, (int, float)): return v * 3 + 1
    if isinstance(v, str): return v + "_x"
    if isinstance(v, (list, tuple)): return list(v) + ["x"]
    if isinstance(v, dict): return {**v, "x": 1}
    return "x"


def _plain(v): return json.loads(json.dumps(v))


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_preset_builds_and_defaults_fill_the_rest(name):
    p = TrainParams.from_recipe(name)
    d, default = p.to_dict(), TrainParams().to_dict()
    assert p.recipe == name
    for k, v in RECIPES[name].items():
        if k != "overrides": assert d[k] == _plain(v), k
    for k in default:
        if k not in RECIPES[name] and k != "recipe": assert d[k] == default[k], k


def test_every_line_of_the_presets_has_a_comment():
    src = Path(R.__file__).read_text()
    assert uncommented_lines(src) == []
    first, last = R._literal_span(src)
    assert last - first + 1 >= sum(len(r) for r in RECIPES.values())  # one line per key at least
    lines = src.splitlines()                                           # the check itself catches a line without a comment
    i = next(i for i in range(first, last) if '"mix_p": 0.7' in lines[i - 1])
    lines[i - 1] = lines[i - 1].split("#")[0].rstrip()
    assert [n for n, _ in uncommented_lines("\n".join(lines))] == [i]


@pytest.mark.parametrize("name", list(RECIPES))
def test_what_you_pass_wins_even_a_default_value(name):
    default = TrainParams()
    keys = [k for k in RECIPES[name] if k not in ("overrides", "ensemble") and _plain(RECIPES[name][k]) != _plain(getattr(default, k))]
    assert keys
    for k in keys:
        # offline weights exist for some backbones only: the default backbone comes with the default weights
        pair = {"pretrained": default.pretrained} if k == "backbone" and RECIPES[name].get("pretrained") == "offline" else {}
        p = TrainParams.from_recipe(name, **{k: getattr(default, k)}, **pair)   # the default's value, passed: it wins
        assert _plain(getattr(p, k)) == _plain(getattr(default, k)), k
    assert TrainParams.from_recipe("baseline", pretrained=False).pretrained is False   # baseline without hub weights


def test_unknown_recipe_lists_the_known():
    with pytest.raises(ValueError) as e: TrainParams.from_recipe("rank_one")
    assert "rank_one" in str(e.value) and all(n in str(e.value) for n in RECIPES)


def test_preset_is_a_copy_and_post_keys_are_fields():
    p = preset("rank1_effb4_cutmix")
    p["ensemble"]["top_k"] = 99
    assert RECIPES["rank1_effb4_cutmix"]["ensemble"]["top_k"] == 3
    assert set(POST_KEYS) <= set(TrainParams.fields())


def test_missing_overrides_file_becomes_none(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(RECIPES["multihead_effb2_agereg"], "overrides", str(tmp_path / "absent.csv"))
    assert TrainParams.from_recipe("multihead_effb2_agereg").overrides is None
    assert "absent.csv" in capsys.readouterr().out
    f = tmp_path / "ov.csv"; f.write_text("id,field,value,reason\n")
    monkeypatch.setitem(RECIPES["multihead_effb2_agereg"], "overrides", str(f))
    assert TrainParams.from_recipe("multihead_effb2_agereg").overrides == str(f.resolve())


def test_bad_values_name_the_key():
    for k, v in [("mix", "vertical_cutmx"), ("backbone", "resnet_nope"), ("optimizer", "lamb"), ("augment", ["flip"])]:
        with pytest.raises(ValueError) as e: TrainParams.from_recipe("baseline", **{k: v})
        assert f"{k}=" in str(e.value)


@pytest.mark.parametrize("name", list(RECIPES))
def test_scale_down_swaps_size_and_keeps_techniques(name):
    r = TrainParams.from_recipe(name)
    s = scale_down(r, img_size=96, epochs=2, limit=20, image_hw=(200, 200))
    assert isinstance(s, TrainParams) and (s.backbone, s.pretrained, s.epochs, s.limit) == ("tf_efficientnet_lite0", "offline", 2, 20)
    hw = R._hw_of(s.img_size)
    assert abs(max(hw) - 96) <= 4  # long side ~96 (multiples of 8 for a non-square preset)
    if "img_size" in RECIPES[name]:  # aspect kept
        ph, pw = R._hw_of(RECIPES[name]["img_size"])
        assert abs(hw[0] / hw[1] - ph / pw) < 0.1
    assert s.amp == "none" and s.train_on_all is False and s.recipe == name
    for k in ("loss", "mix", "mix_p", "sampler", "optimizer", "lr", "scheduler", "age_bounds", "drop_ages", "head", "hidden"):
        assert getattr(s, k) == getattr(r, k), k
    assert r.backbone == RECIPES[name]["backbone"]  # the input is not modified


def test_scale_down_scales_crops_to_the_photo_size():
    r = TrainParams.from_recipe("effb4_madgrad_sgdft")
    s = scale_down(r, image_hw=(256, 192))  # half the competition photo: half the crop
    assert _plain(s.augment) == [{"name": "center_crop", "size": [190, 190]}]
    assert scale_down(r).augment == r.augment


def test_a_preset_resolves_with_the_package_copied_outside_the_repository(tmp_path):
    "No notebook is read: the presets and the defaults are code."
    shutil.copytree(Path(R.__file__).parent, tmp_path / "maskkit", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import maskkit, maskkit.experiment as e; assert maskkit.__file__.startswith(%r); "
            "p = maskkit.TrainParams.from_recipe('rank1_effb4_cutmix', epochs=1); print(p.backbone, p.epochs, p.mix)") % str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["tf_efficientnet_b4", "1", "vertical_cutmix"]


SMOKE = dict(backbone="resnet10t", pretrained=False, img_size=64, epochs=1, limit=12, train_on_all=None, batch_size=16)


def _smoke_run(name, root, runs, cache):
    "A preset at smoke size through train_run (in a spawned process); its parameters."
    os.environ["MASKKIT_CACHE"] = cache
    from maskkit.experiment import TrainParams, train_run
    p = scale_down(TrainParams.from_recipe(name, data_root=str(root), run_name=f"test-recipes-{name}", num_threads=1), **SMOKE)
    train_run(p, root=runs, verbose=False)
    return p.to_dict()


def test_every_preset_runs_end_to_end_at_smoke_size(tmp_path):
    "All presets, tiny backbone, 64 px, 1 epoch, 12 demo persons, through train_run (2 at a time)."
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from maskkit.demo import ensure_demo_dataset
    from maskkit.runs import Run
    demo = ensure_demo_dataset(project_root() / "data" / "demo", verbose=False)
    root = tmp_path / "demo_train_only"; root.mkdir()
    (root / "train").symlink_to(Path(demo).resolve() / "train")  # no eval/: the runs skip test predictions
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        futures = {name: ex.submit(_smoke_run, name, root, str(tmp_path / "runs"), os.environ["MASKKIT_CACHE"]) for name in RECIPES}
        passed = {name: f.result() for name, f in futures.items()}
    for name, p in passed.items():
        run = Run.open(p["run_name"], tmp_path / "runs")
        cfg = run.config
        assert run.finished and cfg["recipe"] == name and cfg["backbone"] == "resnet10t" and cfg["data_root"] == str(root.resolve()), name
        for k in RECIPES[name]:  # the scaled preset reached the run as it was passed
            if k != "overrides": assert cfg[k] == p[k], (name, k)
        if p["train_on_all"]: assert run.summary["epochs_run"] == 1, name
        else: assert len(run.metrics()) == 1 and 0 <= run.summary["macro_f1"] <= 1, name
        assert not (run.path / "test.csv").exists()
