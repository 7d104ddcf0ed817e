"Behaviour of maskkit.recipes: presets, how they resolve against 04_train's parameters, and that each one runs."
import json
from pathlib import Path

import pytest

import maskkit.recipes as R
from maskkit.data import project_root
from maskkit.recipes import RECIPES, POST_KEYS, check, given, resolve, scale_down, uncommented_lines


@pytest.fixture(scope="module")
def defaults():
    "The defaults of nbs/04_train.ipynb's parameters cell."
    return R.train_defaults()


def _other(v):
    "A value of the same kind that differs from `v`."
    if isinstance(v, bool): return not v
    if isinstance(v, (int, float)): return v * 3 + 1
    if isinstance(v, str): return v + "_x"
    if isinstance(v, (list, tuple)): return list(v) + ["x"]
    if isinstance(v, dict): return {**v, "x": 1}
    return "x"


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_preset_resolves_and_checks(name, defaults):
    r = check(resolve(name, {}, defaults, verbose=False))
    assert r["recipe"] == name
    for k, v in RECIPES[name].items():
        if k != "overrides": assert R._plain(r[k]) == R._plain(v), k
    for k, v in defaults.items():
        if k not in RECIPES[name] and k != "recipe": assert r[k] == v, k  # defaults fill the rest


def test_every_line_of_the_presets_has_a_comment():
    src = Path(R.__file__).read_text()
    assert uncommented_lines(src) == []
    first, last = R._literal_span(src)
    assert last - first + 1 >= sum(len(r) for r in RECIPES.values())  # one line per key at least
    # the check itself catches a line without a comment
    lines = src.splitlines()
    i = next(i for i in range(first, last) if '"mix_p": 0.7' in lines[i - 1])
    lines[i - 1] = lines[i - 1].split("#")[0].rstrip()
    assert [n for n, _ in uncommented_lines("\n".join(lines))] == [i]


@pytest.mark.parametrize("name", list(RECIPES))
def test_explicit_params_win_over_preset_and_defaults_do_not(name, defaults):
    preset = RECIPES[name]
    keys = [k for k in preset if k in defaults and k != "overrides"]
    assert keys
    passed = {**defaults, **{k: _other(preset[k]) for k in keys}}
    r = resolve(name, passed, defaults, verbose=False)
    for k in keys:
        # a passed value wins when it differs from the default; one equal to the default leaves the preset's value
        want = passed[k] if R._plain(passed[k]) != R._plain(defaults[k]) else preset[k]
        assert R._plain(r[k]) == R._plain(want), k
    same = resolve(name, dict(defaults), defaults, verbose=False)  # everything at its default: the preset wins
    assert all(R._plain(same[k]) == R._plain(preset[k]) for k in keys)


def test_given_treats_lists_and_tuples_alike():
    d = {"augment": ("hflip",), "lr": 1e-3}
    assert given({"augment": ["hflip"], "lr": 1e-3}, d) == {}
    assert given({"augment": ["hflip", "erasing"], "lr": 1e-3, "new": 1}, d) == {"augment": ["hflip", "erasing"], "new": 1}


def test_unknown_recipe_lists_the_known(defaults):
    with pytest.raises(ValueError) as e: resolve("rank_one", {}, defaults)
    assert "rank_one" in str(e.value) and all(n in str(e.value) for n in RECIPES)


def test_no_recipe_is_defaults_plus_given(defaults):
    k = next(k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    r = resolve(None, {**defaults, k: _other(defaults[k])}, defaults)
    assert r == {**defaults, k: _other(defaults[k])}


def test_dict_recipe_changes_a_named_preset_even_to_default_values(defaults):
    k = next(k for k in RECIPES["baseline"] if k in defaults and R._plain(RECIPES["baseline"][k]) != R._plain(defaults[k]))
    r = resolve({"name": "baseline", k: defaults[k]}, dict(defaults), defaults, verbose=False)
    assert r["recipe"] == "baseline" and r[k] == defaults[k]  # the dict wins, though its value is the default
    assert all(R._plain(r[j]) == R._plain(v) for j, v in RECIPES["baseline"].items() if j != k)


def test_a_scaled_set_passed_as_run_train_passes_it_comes_back_exactly(defaults):
    "What 04_train does with run_train's parameters: resolve(recipe, params, defaults) gives the set back, named."
    for name in RECIPES:
        s = scale_down(resolve(name, {}, defaults, verbose=False), backbone="resnet10t", pretrained=False, img_size=64)
        p = R.train_params(s, defaults)
        p["recipe"] = {"name": name, **{k: v for k, v in p.items() if k != "recipe"}}
        back = resolve(p["recipe"], p, defaults, verbose=False)
        assert back["recipe"] == name
        assert all(R._plain(back[k]) == R._plain(s[k]) for k in defaults if k not in ("recipe", "overrides")), name


def test_extra_preset_keys_are_kept_and_reported(defaults, capsys):
    r = resolve("rank1_effb4_cutmix", {}, defaults)
    assert r["finetune_on_valid_epochs"] == 3 and r["ensemble"] == RECIPES["rank1_effb4_cutmix"]["ensemble"]
    assert r["ensemble"] is not RECIPES["rank1_effb4_cutmix"]["ensemble"]  # a copy: editing it leaves the preset alone
    out = capsys.readouterr().out
    assert "ensemble" in out and "finetune_on_valid_epochs" in defaults   # a notebook parameter now: not "extra"
    assert set(k for k in RECIPES["rank1_effb4_cutmix"] if k not in defaults) <= set(POST_KEYS)


def test_missing_overrides_file_becomes_none(defaults, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(RECIPES["multihead_effb2_agereg"], "overrides", str(tmp_path / "absent.csv"))
    assert resolve("multihead_effb2_agereg", {}, defaults)["overrides"] is None
    assert "absent.csv" in capsys.readouterr().out
    f = tmp_path / "ov.csv"; f.write_text("id,field,value,reason\n")
    monkeypatch.setitem(RECIPES["multihead_effb2_agereg"], "overrides", str(f))
    assert resolve("multihead_effb2_agereg", {}, defaults, verbose=False)["overrides"] == str(f.resolve())


def test_check_names_recipe_and_key(defaults):
    r = resolve("baseline", {}, defaults, verbose=False)
    for k, v in [("mix", "vertical_cutmx"), ("backbone", "resnet_nope"), ("optimizer", "lamb"), ("augment", ["flip"])]:
        with pytest.raises(ValueError) as e: check({**r, k: v})
        assert "baseline" in str(e.value) and k in str(e.value)


@pytest.mark.parametrize("name", list(RECIPES))
def test_scale_down_swaps_size_and_keeps_techniques(name, defaults):
    r = resolve(name, {}, defaults, verbose=False)
    s = scale_down(r, img_size=96, epochs=2, limit=20, image_hw=(200, 200))
    assert (s["backbone"], s["pretrained"], s["epochs"], s["limit"]) == ("tf_efficientnet_lite0", "offline", 2, 20)
    hw = R._hw_of(s["img_size"])
    assert abs(max(hw) - 96) <= 4  # long side ~96 (multiples of 8 for a non-square preset)
    if "img_size" in RECIPES[name]:  # aspect kept
        ph, pw = R._hw_of(RECIPES[name]["img_size"])
        assert abs(hw[0] / hw[1] - ph / pw) < 0.1
    assert s["amp"] == "none" and s["train_on_all"] is False
    for k in ("loss", "mix", "mix_p", "sampler", "optimizer", "lr", "scheduler", "age_bounds", "drop_ages", "head", "hidden"):
        if k in r: assert s[k] == r[k], k
    assert r["backbone"] == RECIPES[name]["backbone"]  # the input is not modified


def test_scale_down_scales_crops_to_the_photo_size(defaults):
    r = resolve("effb4_madgrad_sgdft", {}, defaults, verbose=False)
    s = scale_down(r, image_hw=(256, 192))  # half the competition photo: half the crop
    assert s["augment"] == [{"name": "center_crop", "size": [190, 190]}]
    assert scale_down(r)["augment"] == r["augment"]


def test_notebook_params_reads_the_parameters_cell(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# x"},
                    {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "a = 1\nb = (2, 3)\n_c = 4\n"},
                    {"cell_type": "code", "metadata": {}, "source": "a = 5\n"}]}
    (tmp_path / "n.ipynb").write_text(json.dumps(nb))
    assert R.notebook_params(tmp_path / "n.ipynb") == {"a": 1, "b": (2, 3)}
    nb["cells"][1]["metadata"] = {}
    (tmp_path / "m.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="m.ipynb"): R.notebook_params(tmp_path / "m.ipynb")


SMOKE = dict(backbone="resnet10t", pretrained=False, img_size=64, epochs=1, limit=12, train_on_all=None, batch_size=16)


def _smoke_run(name, root, out_dir):
    "Resolve `name`, scale it to smoke size and run it through 04_train; returns the parameters passed."
    defaults = R.train_defaults()
    base = {"data_root": str(root), "run_name": f"test-recipes-{name}", "num_workers": 0, "fold": 0, "resume": False}
    p = check(scale_down(resolve(name, {**defaults, **base}, defaults, verbose=False), **SMOKE))
    R.run_train(p, output=Path(out_dir) / f"{name}.ipynb", defaults=defaults)
    return p


def test_every_preset_runs_end_to_end_at_smoke_size(tmp_path):
    "All presets, tiny backbone, 64 px, 1 epoch, 12 demo persons, through papermill of nbs/04_train.ipynb (2 at a time)."
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from maskkit.demo import ensure_demo_dataset
    from maskkit.runs import load_run, runs_root
    demo = ensure_demo_dataset(project_root() / "data" / "demo", verbose=False)
    root = tmp_path / "demo_train_only"; root.mkdir()
    (root / "train").symlink_to(Path(demo).resolve() / "train")  # no eval/: the runs skip test predictions
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        futures = {name: ex.submit(_smoke_run, name, root, tmp_path) for name in RECIPES}
        passed = {name: f.result() for name, f in futures.items()}
    defaults = R.train_defaults()
    for name, p in passed.items():
        run = load_run(runs_root() / p["run_name"])
        cfg = run["config"]
        assert cfg["recipe"] == name and cfg["backbone"] == "resnet10t" and cfg["data_root"] == str(root), name
        for k in RECIPES[name]:  # the resolved preset reached the run as it was passed
            if k in defaults and k != "overrides": assert R._plain(cfg[k]) == R._plain(p[k]), (name, k)
        if p["train_on_all"]: assert run["summary"]["epochs_run"] == 1, name
        else: assert len(run["metrics"]) == 1 and 0 <= run["summary"]["macro_f1"] <= 1, name
