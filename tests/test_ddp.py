"DDP under torchrun on CPU (gloo, 2 processes): one run record, disjoint shares of every epoch, every validation image once."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd, pytest
from maskkit import TrainParams, train_run
from maskkit.data import project_root
from maskkit.demo import ensure_demo_dataset
from maskkit.runs import Run

TORCHRUN = Path(sys.executable).parent / "torchrun"
ARGS = dict(limit=30, epochs=3, img_size=64, batch_size=8, num_threads=1, seed=7, lr=3e-3)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_torchrun_two_processes_on_cpu(tmp_path):
    ensure_demo_dataset(project_root() / "data" / "demo", verbose=False)
    runs = tmp_path / "runs"
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29517", "-m", "maskkit", "train", "--run-name", "ddp", "--runs", str(runs)]
    for k, v in ARGS.items(): cmd += [f"--{k.replace('_', '-')}", json.dumps(v)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert r.stdout.count('"run":') == 1                                    # rank 0 alone reports
    assert [p.name for p in runs.iterdir()] == ["ddp"]                        # one run record
    run = Run.open("ddp", runs)
    assert run.finished and run.config["world_size"] == 2 and len(run.metrics()) == ARGS["epochs"] and not (run.path / "run.lock").exists()
    d = json.loads((run.path / "ddp.json").read_text())
    assert d["world_size"] == 2 and d["backend"] == "gloo" and len(d["epochs"]) == ARGS["epochs"]
    for e in d["epochs"]:
        a, b = (set(i) for i in e["indices"])
        assert not a & b and abs(len(a) - len(b)) <= 1                      # each rank its own half of the epoch
    assert d["epochs"][0]["indices"] != d["epochs"][1]["indices"]           # reshuffled per epoch
    oof = run.predictions("oof")
    assert oof.path.is_unique and set(oof.path) == set(train_run_valid_paths(run))   # every validation image exactly once
    # the same seed in one process, with the batch both ranks together had: close scores
    one = train_run(TrainParams(run_name="one", **{**ARGS, "batch_size": 16}), root=runs, verbose=False)
    m2, m1 = run.metrics().iloc[-1], one.metrics().iloc[-1]
    print(f"last epoch, 2 processes vs 1: valid loss {m2.valid_loss:.4f} vs {m1.valid_loss:.4f}, "
          f"valid macro-F1 {m2.valid_macro_f1:.4f} vs {m1.valid_macro_f1:.4f}, train loss {m2.train_loss:.4f} vs {m1.train_loss:.4f}")
    assert abs(m2.valid_loss - m1.valid_loss) <= 0.25 and abs(m2.valid_macro_f1 - m1.valid_macro_f1) <= 0.3   # 42 images: F1 is noisy
    assert m2.train_loss < run.metrics().iloc[0].train_loss and len(one.predictions("oof")) == len(oof)   # it learns


def train_run_valid_paths(run):
    "The validation images of a run's fold, from its config."
    from maskkit.experiment import load_fold
    return load_fold(TrainParams.from_json(run.path / "config.json"), verbose=False).valid.path


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_a_killed_ddp_run_resumes(tmp_path):
    "Kill torchrun once rank 0 wrote last.pt; the same command resumes (the dead owner's lock taken over) and finishes."
    import signal, time
    ensure_demo_dataset(project_root() / "data" / "demo", verbose=False)
    runs = tmp_path / "runs"
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29518", "-m", "maskkit", "train", "--run-name", "ddpk", "--runs", str(runs)]
    for k, v in {**ARGS, "epochs": 4}.items(): cmd += [f"--{k.replace('_', '-')}", json.dumps(v)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, start_new_session=True)
    last, t0 = runs / "ddpk" / "last.pt", time.time()
    while not last.exists() and time.time() - t0 < 300 and p.poll() is None: time.sleep(0.2)
    kids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _ppid(int(d.name)) == p.pid]
    for pid in [*kids, p.pid]:                              # the ranks (torchrun starts them apart) and torchrun itself
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    p.wait()
    from maskkit.runs import _pid_alive
    owner = json.loads((runs / "ddpk" / "run.lock").read_text())["pid"]
    t0 = time.time()
    while _pid_alive(owner) and time.time() - t0 < 30: time.sleep(0.2)   # the killed ranks are gone (reaped) before the rerun
    assert last.exists() and not (runs / "ddpk" / "model.pt").exists() and len(pd.read_csv(runs / "ddpk" / "metrics.csv")) < 4
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed ddpk after epoch" in r.stdout
    run = Run.open("ddpk", runs)
    assert run.finished and run.metrics().epoch.tolist() == [0, 1, 2, 3]


def _ppid(pid):
    try: return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError): return None
