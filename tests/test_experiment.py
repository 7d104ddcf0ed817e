"train_run, TrainParams, Predictor and the CLI end to end on the demo set: the library's whole job, and its errors up front."
import json, os, re, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
from PIL import Image

import maskkit
from maskkit import TrainParams, train_run, Predictor
from maskkit.data import DataError, project_root
from maskkit.demo import ensure_demo_dataset
from maskkit.labels import PROB_COLS
from maskkit.runs import Run, RunLocked, RunMismatch

ROOT = project_root()
DEMO = ROOT / "data" / "demo"
TINY = dict(limit=20, epochs=1, img_size=64, batch_size=16, num_threads=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    "One tiny trained run on the demo set, its runs folder and a face cache, all temporary."
    ensure_demo_dataset(DEMO, verbose=False)
    base = tmp_path_factory.mktemp("exp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKKIT_CACHE", str(base / "cache")); mp.setenv("MASKKIT_REPORTS", str(base / "reports"))
        run = train_run(TrainParams(run_name="tiny", **TINY), verbose=False)
        yield {"base": base, "run": run, "runs": base / "reports" / "runs"}


def _copy_demo(dst):
    shutil.copytree(DEMO, dst, ignore=shutil.ignore_patterns("faces.parquet", "crops_*"))
    return dst


def test_the_five_line_script(tmp_path):
    "A plain script, no papermill: train on the demo set, predict on a folder of new photos of any layout."
    photos = tmp_path / "new photos" / "nested"; photos.mkdir(parents=True)
    for f in sorted((DEMO / "eval" / "images").iterdir())[:3]: shutil.copy(f, photos / f.name)
    import skimage.data
    Image.fromarray(skimage.data.astronaut()).save(photos.parent / "astronaut.png")
    script = tmp_path / "five_lines.py"
    script.write_text(textwrap.dedent(f"""
        from maskkit import train_run, TrainParams, Predictor
        run = train_run(TrainParams(epochs=1))
        preds = Predictor.from_run(run).predict({str(photos.parent)!r})
        preds.to_csv({str(tmp_path / 'preds.csv')!r}, index=False)
        print(run.path)
    """))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == 4 and preds["class"].between(0, 17).all() and np.allclose(preds[PROB_COLS].sum(axis=1), 1)
    assert set(preds.face_method) <= {"face", "fallback"} and preds.error.isna().all()
    assert Path(r.stdout.strip().splitlines()[-1]).parent == Path(os.environ["MASKKIT_REPORTS"]) / "runs"


def test_predictor_equals_the_runs_own_test_predictions(env):
    run = env["run"]
    test = run.predictions("test").set_index("ImageID")
    again = Predictor.from_run(run).predict(pd.read_csv(DEMO / "eval" / "info.csv", dtype=str).assign(
        path=lambda d: [str((DEMO / "eval" / "images" / i).resolve()) for i in d.ImageID])).set_index("ImageID")
    assert np.abs(again.loc[test.index, PROB_COLS].to_numpy() - test[PROB_COLS].to_numpy()).max() < 1e-6
    assert (again.loc[test.index, "class"].to_numpy() == test.pred.to_numpy()).all()
    sub = pd.read_csv(run.path / "submission.csv", dtype={"ImageID": str})
    assert sub.ImageID.tolist() == pd.read_csv(DEMO / "eval" / "info.csv", dtype=str).ImageID.tolist()


def test_maskkit_predict_writes_the_same_classes(env, tmp_path):
    run, out = env["run"], tmp_path / "preds.csv"
    r = subprocess.run([sys.executable, "-m", "maskkit.cli", "predict", str(run.path), str(DEMO / "eval" / "images"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = pd.read_csv(out).assign(name=lambda d: d.path.map(lambda p: Path(p).name)).set_index("name")
    test = run.predictions("test").set_index("ImageID")
    assert len(got) == len(test) and (got.loc[test.index, "class"].to_numpy() == test.pred.to_numpy()).all()


def test_bad_inputs_give_a_row_each(env, tmp_path):
    rgb = np.asarray(Image.open(sorted((DEMO / "eval" / "images").iterdir())[0]).convert("RGB"))
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png"); Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "gray16.png")
    Image.fromarray(np.full((200, 160, 3), 128, np.uint8)).save(tmp_path / "no_face.png")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "cmyk.jpg").read_bytes()[:200])
    (tmp_path / "notes.txt").write_text("hello"); (tmp_path / "empty").mkdir()
    p = Predictor.from_run(env["run"])
    inputs = [tmp_path / n for n in ("gray.png", "rgba.png", "cmyk.jpg", "gray16.png", "no_face.png", "truncated.jpg", "notes.txt", "missing.jpg")]
    got = p.predict(inputs)
    assert len(got) == len(inputs) and got.source.tolist() == [str(i) for i in inputs]
    ok = got["class"].notna()
    assert ok.tolist() == [True] * 5 + [False] * 3 and got.error[~ok].notna().all() and got.error[ok].isna().all()
    assert got.set_index(got.source.map(lambda s: Path(s).name)).loc["no_face.png", "face_method"] == "fallback"
    assert bool(got.fallback[4]) and "truncated" in got.error[5]
    assert len(p.predict(tmp_path / "empty")) == 1 and "no files" in p.predict(tmp_path / "empty").error[0]
    with pytest.raises(DataError, match="notes.txt"): p.predict([tmp_path / "notes.txt"], errors="raise")
    arr = p.predict([rgb, Image.fromarray(rgb)])                                 # arrays and PIL images, as the file
    assert np.allclose(arr[PROB_COLS].to_numpy()[0], arr[PROB_COLS].to_numpy()[1])


def test_a_folder_in_chunks_equals_one_chunk_and_a_bad_file_stops_raise_first(env, tmp_path, monkeypatch):
    "predict() reads ahead chunk by chunk: the same frame as one chunk; errors='raise' names a bad file before classifying anything."
    folder = tmp_path / "photos"; (folder / "sub").mkdir(parents=True)
    files = sorted((DEMO / "eval" / "images").iterdir())[:9]
    for k, f in enumerate(files): shutil.copy(f, (folder / "sub" if k % 2 else folder) / f.name)
    (folder / "zz_broken.jpg").write_bytes(files[0].read_bytes()[:150])       # truncated: readable header, bad body
    one = Predictor.from_run(env["run"], chunk_size=1000).predict(folder)
    chunked = Predictor.from_run(env["run"], chunk_size=4).predict(folder)
    pd.testing.assert_frame_equal(chunked, one)
    assert len(one) == 10 and one.error.notna().sum() == 1 and "truncated" in one.error.iloc[-1]
    (folder / "sub" / "notes.jpg").write_text("not an image")
    p = Predictor.from_run(env["run"], chunk_size=4)
    classified = []
    monkeypatch.setattr(Predictor, "predict_proba", lambda self, *a, **k: classified.append(1))
    with pytest.raises(DataError, match="notes.jpg"): p.predict(folder, errors="raise")
    assert not classified                                                       # stopped before the first chunk


def test_an_ensemble_soft_votes(env):
    run = env["run"]
    one, two = Predictor.from_run(run), Predictor.from_runs([run, run], weights=[0.3, 0.7])
    f = sorted((DEMO / "eval" / "images").iterdir())[:4]
    assert np.allclose(one.predict(f)[PROB_COLS].to_numpy(), two.predict(f)[PROB_COLS].to_numpy(), atol=1e-9)


def test_eval_set_faults_stop_the_run_before_training(tmp_path):
    "A missing or truncated eval image, or a duplicate ImageID: a DataError naming it, and no epoch trained."
    cases = {"missing": lambda d: next((d / "eval" / "images").iterdir()).unlink(),
             "duplicate": lambda d: (d / "eval" / "info.csv").write_text((d / "eval" / "info.csv").read_text() +
                                                                         (d / "eval" / "info.csv").read_text().splitlines()[1] + "\n"),
             "truncated": lambda d: (lambda f: f.write_bytes(f.read_bytes()[:300]))(sorted((d / "eval" / "images").iterdir())[0])}
    for name, plant in cases.items():
        d = _copy_demo(tmp_path / name); plant(d)
        with pytest.raises(DataError) as e: train_run(TrainParams(data_root=str(d), run_name=name, **TINY), root=tmp_path / "runs", verbose=False)
        assert name[:5] in str(e.value).lower() or "not found" in str(e.value), (name, str(e.value))
        assert not (tmp_path / "runs" / name / "metrics.csv").exists(), name


def test_a_truncated_training_image_is_reported_before_any_detection(tmp_path):
    d = _copy_demo(tmp_path / "d")
    bad = sorted((d / "train" / "images").rglob("mask1.*"))[0]
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError, match=bad.name):
        train_run(TrainParams(data_root=str(d), run_name="t", **{**TINY, "limit": None}), root=tmp_path / "runs", verbose=False)
    assert not any(Path(os.environ["MASKKIT_CACHE"]).rglob("faces.parquet"))   # nothing was detected


def test_resume_with_other_data_fold_or_params_is_refused(env):
    run = env["run"]
    for change in ({"fold": 1}, {"seed": 1}, {"lr": 3e-4}, {"data_root": str(DEMO.parent)}):
        with pytest.raises((RunMismatch, DataError)) as e:
            train_run(TrainParams(run_name="tiny", **{**TINY, **change}), root=env["runs"], verbose=False)
        if isinstance(e.value, RunMismatch): assert next(iter(change)) in str(e.value)
    assert Run.open(run.path).config["fold"] == 0                                  # the record is untouched
    again = train_run(TrainParams(run_name="tiny", **{**TINY, "num_threads": 2}), root=env["runs"], verbose=False)   # execution-only keys may change
    assert again.finished


def test_data_fingerprint_changes_with_the_data(tmp_path):
    from maskkit.experiment import data_fingerprint
    d = _copy_demo(tmp_path / "d")
    a = data_fingerprint(d)
    f = sorted((d / "train" / "images").rglob("*.jpg"))[0]
    f.write_bytes(f.read_bytes() + b"\0")
    assert data_fingerprint(d) != a


def _train_script(tmp_path, name, **kw):
    s = tmp_path / f"{name}.py"
    s.write_text(f"from maskkit import train_run, TrainParams\ntrain_run(TrainParams(**{kw!r}), root={str(tmp_path / 'runs')!r})\n")
    return s


def test_two_live_runs_with_one_name_cannot_mix(tmp_path):
    "Two processes start the same run name with different lr: one owns the folder, the other stops at once."
    procs = [subprocess.Popen([sys.executable, str(_train_script(tmp_path, f"p{i}", run_name="same", lr=lr, **TINY))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, lr in enumerate((1e-3, 3e-4))]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], [o[1][-1500:] for o in outs]
    loser = outs[codes.index(1)][1]
    assert "RunLocked" in loser or "RunMismatch" in loser          # in use by the other pid, or (if it came second) refused
    run = Run.open("same", tmp_path / "runs")
    winner_lr = (1e-3, 3e-4)[codes.index(0)]
    assert run.config["lr"] == winner_lr and run.finished and len(run.metrics()) == 1
    assert not (run.path / "run.lock").exists()


def test_a_killed_run_resumes_and_a_stale_lock_is_taken_over(tmp_path):
    kw = dict(run_name="killed", **{**TINY, "epochs": 3})
    p = subprocess.Popen([sys.executable, str(_train_script(tmp_path, "k", **kw))], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "runs" / "killed" / "last.pt"
    t0 = time.time()
    while not last.exists() and time.time() - t0 < 300 and p.poll() is None: time.sleep(0.2)
    p.send_signal(signal.SIGKILL); p.wait()
    assert last.exists() and (tmp_path / "runs" / "killed" / "run.lock").exists()        # killed mid-run: its lock stays
    r = subprocess.run([sys.executable, str(_train_script(tmp_path, "k2", **kw))], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stale lock" in r.stderr and "resumed killed after epoch" in r.stdout
    run = Run.open("killed", tmp_path / "runs")
    assert run.finished and run.metrics().epoch.tolist() == [0, 1, 2]


def test_post_steps_through_train_run(env, tmp_path):
    run = train_run(TrainParams(run_name="post", sgd_finetune_epochs=1, finetune_on_valid_epochs=1, pseudo_from=str(env["run"].path),
                                pseudo_threshold=0.01, **TINY), root=tmp_path, verbose=False)
    assert len(pd.read_csv(run.path / "sgd_finetune" / "metrics.csv")) == 1
    assert len(pd.read_csv(run.path / "finetune_valid" / "metrics.csv")) == 1
    assert run.config["pseudo_from"] == str(env["run"].path)


def test_kfold_means_k_folds_and_never_reuses_other_params(tmp_path, capsys):
    from maskkit.experiment import run_kfold
    p = TrainParams(**{**TINY, "limit": 12})
    out = run_kfold(p, folds=2, prefix="kf", root=tmp_path / "runs")
    assert [r.name for r in out["runs"]] == ["kf_fold0", "kf_fold1"] and all(r.config["n_splits"] == 2 for r in out["runs"])
    e = out["ensemble"]
    assert e["n_oof"] == sum(len(r.predictions("oof")) for r in out["runs"]) and Path(e["submission"]).is_file()
    assert Path(e["submission"]).parent == Path(os.environ["MASKKIT_REPORTS"]) / "kfold" / "kf"
    printed = capsys.readouterr().out
    assert "[fold 0: 1/2]" in printed and "valid macro-F1" in printed and "OOF macro-F1" in printed
    assert re.search(r"^epoch 1/1: train_loss=.* img/s; elapsed [0-9.]+ min, ETA [0-9.]+ min\)$", printed, re.M)   # a line per epoch
    run_kfold(p, folds=2, prefix="kf", root=tmp_path / "runs")
    assert "finished before" in capsys.readouterr().out
    with pytest.raises(RunMismatch, match="lr"): run_kfold(p.replace(lr=0.01), folds=2, prefix="kf", root=tmp_path / "runs")


def test_train_params_validate_and_round_trip():
    p = TrainParams(epochs=3, img_size=[160, 128], augment=["hflip", {"name": "rotate", "degrees": 5}])
    assert TrainParams.from_json(p.to_json()) == p and p.img_size == (160, 128)
    with pytest.raises(ValueError, match="epoch.*did you mean 'epochs'"): TrainParams.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="lr=-1"): TrainParams(lr=-1)
    with pytest.raises(ValueError, match="2 bad values"): TrainParams(head="triple", tta="vflip")
    with pytest.raises(ValueError, match="expected an int"): TrainParams(epochs="3")


def test_import_maskkit_gives_the_whole_job():
    for name in ("train_run", "TrainParams", "Predictor", "build_model", "score_submission", "list_recipes", "RECIPES", "run_kfold"):
        assert getattr(maskkit, name) is not None, name
    assert "baseline" in maskkit.list_recipes()
    with pytest.raises(AttributeError): maskkit.no_such_thing


def test_cli_help_lists_the_options(capsys):
    r = subprocess.run([sys.executable, "-m", "maskkit.cli", "train", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--img-size" in r.stdout, r.stdout[-500:]   # from a shell; the others in this process
    from maskkit.cli import main
    for cmd, want in (("kfold", "--folds"), ("predict", "--out"), ("score", "solution"), ("audit", "--strict")):
        with pytest.raises(SystemExit) as e: main([cmd, "--help"])
        assert e.value.code == 0 and want in capsys.readouterr().out, cmd


def test_cli_score_and_audit(env, tmp_path, capsys):
    sub = env["run"].path / "submission.csv"
    r = subprocess.run([sys.executable, "-m", "maskkit.cli", "score", str(sub), str(DEMO / "eval" / "solution.csv")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and 0 <= json.loads(r.stdout)["macro_f1"] <= 1
    assert json.loads(r.stdout)["macro_f1"] == pytest.approx(env["run"].summary and
                                                              json.loads((env["run"].path / "test_summary.json").read_text())["macro_f1"], abs=1e-6)
    from maskkit.cli import main                                   # the same console script, in this process
    assert main(["score", str(sub), str(tmp_path / "nope.csv")]) == 2 and "nope.csv" in capsys.readouterr().err
    assert main(["audit", str(DEMO)]) == 0 and "images read" in capsys.readouterr().out


def test_kfold_with_two_workers_runs_the_folds_at_once(tmp_path, capsys):
    from maskkit.experiment import run_kfold
    p = TrainParams(**{**TINY, "limit": 12, "num_threads": None})
    out = run_kfold(p, folds=2, prefix="kfw", root=tmp_path / "runs", workers=2)
    assert [r.name for r in out["runs"]] == ["kfw_fold0", "kfw_fold1"] and all(r.finished for r in out["runs"])
    printed = capsys.readouterr().out
    assert "2 folds on 2 CPU workers" in printed and "on a CPU worker" in printed
    e = out["ensemble"]
    assert set(e) >= {"name", "runs", "oof", "n_oof", "per_fold", "submission"} and Path(e["submission"]).is_file()
    assert all(r.config["num_threads"] == max(1, (os.cpu_count() or 1) // 2) for r in out["runs"])   # the cores shared


def test_sweep_space_is_checked_and_the_cli_runs_a_study(tmp_path):
    pytest.importorskip("optuna")
    from maskkit.sweep import load_space
    with pytest.raises(ValueError, match="unknown TrainParams fields"): load_space({"params": {"lrr": {"type": "float", "low": 1, "high": 2}}})
    with pytest.raises(ValueError, match="low < high"): load_space({"params": {"lr": {"type": "float", "low": 2, "high": 1}}})
    space = tmp_path / "space.yaml"
    space.write_text("fixed: {limit: 12, img_size: 64, batch_size: 16, num_threads: 1}\n"
                     "params:\n  epochs: {type: categorical, choices: [1, 2]}\n  lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}\n")
    r = subprocess.run([sys.executable, "-m", "maskkit.cli", "sweep", "--space", str(space), "--trials", "3", "--study", "cli-sweep",
                        "--pruner", "threshold:1.01:1", "--runs", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["trials"] == 3 and out["complete"] + out["pruned"] == 3
    assert (Path(os.environ["MASKKIT_REPORTS"]) / "sweeps" / "cli-sweep" / "trials.csv").is_file()
