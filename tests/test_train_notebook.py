"04_train through papermill on the demo set: the command of the design card, into the test's reports folder."
import json, os
from pathlib import Path
import pandas as pd, pytest
papermill = pytest.importorskip("papermill")
from maskkit.data import project_root, reports_dir
from maskkit.demo import ensure_demo_dataset

ROOT = project_root()


def test_papermill_fold2_one_epoch(tmp_path):
    "`papermill nbs/04_train.ipynb out.ipynb -p fold 2` (+ a short run); the run lands in $MASKKIT_REPORTS, not reports/."
    ensure_demo_dataset(ROOT / "data" / "demo", verbose=False)
    before = sorted((ROOT / "reports").rglob("*")) if (ROOT / "reports").exists() else []
    papermill.execute_notebook(str(ROOT / "nbs" / "04_train.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters=dict(fold=2, epochs=1, img_size=64, limit=20, run_name="pytest-fold2", num_threads=1),
                               cwd=str(ROOT), progress_bar=False)
    run = reports_dir("runs", "pytest-fold2")
    assert str(run).startswith(os.environ["MASKKIT_REPORTS"])
    expected = {"config.json", "git.json", "env.json", "metrics.csv", "per_class_f1.csv", "confusion.csv", "confusion.png",
                "oof.csv", "test.csv", "submission.csv", "best.pt", "model.pt", "summary.json", "curves.png"}
    assert expected <= {p.name for p in run.iterdir()}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["fold"] == 2 and cfg["epochs"] == 1 and cfg["backbone"] == "resnet10t" and len(pd.read_csv(run / "metrics.csv")) == 1
    assert len(pd.read_csv(run / "test.csv")) == len(pd.read_csv(ROOT / "data/demo/eval/info.csv"))
    out = (tmp_path / "out.ipynb").read_text()
    assert "image/png" in out                                            # the figures are inline in the executed notebook
    after = sorted((ROOT / "reports").rglob("*")) if (ROOT / "reports").exists() else []
    assert after == before                                               # nothing written into the project's reports/
