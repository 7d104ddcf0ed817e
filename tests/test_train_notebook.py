"04_train end to end through papermill on the demo set: the CI command, then the optional post-steps."
import json, shutil
from pathlib import Path
import pandas as pd, pytest
papermill = pytest.importorskip("papermill")
from maskkit.data import project_root
from maskkit.demo import ensure_demo_dataset

ROOT = project_root()
RUNS = ROOT / "reports" / "runs"

def run(tmp_path, name, **params):
    shutil.rmtree(RUNS / name, ignore_errors=True)
    papermill.execute_notebook(str(ROOT / "nbs" / "04_train.ipynb"), str(tmp_path / f"{name}.ipynb"), kernel_name="python3",
                               parameters=dict(run_name=name, resume=False, num_threads=1, **params),
                               cwd=str(ROOT), progress_bar=False)
    return RUNS / name

def test_fold2_one_epoch_then_post_steps(tmp_path):
    ensure_demo_dataset(ROOT / "data" / "demo", verbose=False)
    first = run(tmp_path, "pytest-fold2", fold=2, epochs=1, img_size=64)
    expected = {"config.json", "git.json", "env.json", "metrics.csv", "per_class_f1.csv", "confusion.csv",
                "confusion.png", "oof.csv", "test.csv", "best.pt", "summary.json"}
    assert expected <= {p.name for p in first.iterdir()}
    oof = pd.read_csv(first / "oof.csv")
    cfg = json.loads((first / "config.json").read_text())
    assert cfg["fold"] == 2 and len(pd.read_csv(first / "metrics.csv")) == 1
    assert oof[[f"prob_{i}" for i in range(18)]].sum(axis=1).round(4).eq(1).all()
    assert len(pd.read_csv(first / "test.csv")) == len(pd.read_csv(ROOT / "data/demo/eval/info.csv"))

    second = run(tmp_path, "pytest-post", fold=2, epochs=1, img_size=64, limit=20, sgd_finetune_epochs=1,
                 finetune_on_valid_epochs=1, pseudo_from="pytest-fold2", pseudo_threshold=0.01)
    assert len(pd.read_csv(second / "sgd_finetune" / "metrics.csv")) == 1
    assert len(pd.read_csv(second / "finetune_valid" / "metrics.csv")) == 1
    out = (tmp_path / "pytest-post.ipynb").read_text()
    n_test = len(pd.read_csv(ROOT / "data/demo/eval/info.csv"))
    assert f"pseudo-labels from pytest-fold2: {n_test} test images" in out   # threshold 0.01: every test image
