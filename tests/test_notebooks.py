"nbdev hygiene: notebooks committed clean, no cell mixing imports with code, README built from index.ipynb, 04_train's parameters."
import ast, json, shutil, subprocess, sys
from pathlib import Path
import pytest
from maskkit.data import project_root
from maskkit.experiment import TrainParams

ROOT = project_root()
NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
BIN = Path(sys.executable).parent


def _cells(p): return json.loads(p.read_text())["cells"]
def _src(c): return "".join(c["source"])


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_no_cell_mixes_imports_with_other_code(nb):
    "nbdev's doc build runs every cell with an import: one that also computes would run without its inputs."
    bad = []
    for i, c in enumerate(_cells(nb)):
        s = _src(c)
        if c["cell_type"] != "code" or any(l.startswith(("#| export", "#| exec_doc")) for l in s.splitlines()): continue
        if "#| eval: false" in s: continue
        nodes = list(ast.walk(ast.parse(s)))
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in nodes) and any(isinstance(n, (ast.Expr, ast.Assign)) for n in nodes):
            bad.append((i, s.splitlines()[0]))
    assert not bad, bad


def test_nbdev_clean_leaves_the_notebooks_unchanged(tmp_path):
    copies = tmp_path / "nbs"; copies.mkdir()
    for nb in NBS: shutil.copy(nb, copies / nb.name)
    r = subprocess.run([str(BIN / "nbdev_clean"), "--fname", str(copies)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    changed = [nb.name for nb in NBS if (copies / nb.name).read_bytes() != nb.read_bytes()]
    assert not changed, f"run nbdev_clean: {changed}"


def test_readme_is_built_from_index(tmp_path):
    r = subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "markdown", str(ROOT / "nbs" / "index.ipynb"),
                        "--TagRemovePreprocessor.remove_cell_tags=hide", "--output-dir", str(tmp_path), "--output", "README"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text(), "README.md is out of date: run make readme"
    top = (ROOT / "README.md").read_text().split("## ")[1]
    assert top.startswith("Two commands") and "make demo" in top and "make test" in top


def test_04_train_takes_every_train_param():
    cell = next(c for c in _cells(ROOT / "nbs" / "04_train.ipynb") if "parameters" in c.get("metadata", {}).get("tags", []))
    names = [t.targets[0].id for t in ast.parse(_src(cell)).body]
    assert sorted(names) == sorted(TrainParams.fields()) and all(v.value.value is Ellipsis for v in ast.parse(_src(cell)).body)
