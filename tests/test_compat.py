"torchvision on a CPU torch: the import hook, the pure-torch nms, and that it stays out of the way."
import itertools, subprocess, sys, json
import pytest, torch

from maskkit import compat

MODULES = ["torchvision", "timm", "facenet_pytorch", "pytorch_grad_cam"]

@pytest.mark.parametrize("order", [MODULES, MODULES[::-1], ["facenet_pytorch", "torchvision"], ["pytorch_grad_cam", "timm"]])
def test_imports_any_order_in_a_fresh_interpreter(order):
    "The venv's .pth installs the hook, so nothing has to import maskkit first."
    code = "; ".join(f"import {m}" for m in order) + "; from torchvision.ops import nms; import torch; " \
           "print(nms(torch.tensor([[0,0,10,10],[1,1,10,10.]]), torch.tensor([.9,.8]), .5).tolist())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("[0]")

def test_pth_file_is_installed():
    import site, sysconfig
    from pathlib import Path
    pth = Path(sysconfig.get_paths()["purelib"]) / compat.PTH_NAME
    assert pth.exists(), "run `python -m maskkit.compat` (make install does)"
    assert "install_torchvision_hook" in pth.read_text()

def brute_nms(boxes, scores, thr):
    "Reference greedy NMS written from the definition, one pair at a time."
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0])); ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])
        return inter / (area(a) + area(b) - inter)
    for i in order:
        if all(iou(boxes[i].tolist(), boxes[k].tolist()) <= thr for k in keep): keep.append(i)
    return keep

@pytest.mark.parametrize("seed", range(5))
def test_nms_kernel_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(60, 2, generator=g) * 100
    wh = torch.rand(60, 2, generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(60, generator=g)
    for thr in (0.3, 0.5, 0.7):
        assert compat._nms_kernel(boxes, scores, thr).tolist() == brute_nms(boxes, scores, thr)

def test_torchvision_ops_route_to_kernel():
    import torchvision
    from torchvision.ops import nms, batched_nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 1]), 0.5).tolist() == [3, 0, 2]
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0

def test_noop_when_real_ops_load(monkeypatch):
    "Where torchvision's C ops load, nothing is defined and nothing is patched."
    monkeypatch.setitem(compat._state, "library", None)
    assert compat.define_torchvision_ops(c_ops_load=lambda: True) is False
    assert compat._state["library"] is None

def test_hook_in_a_fresh_interpreter_without_pth_needs_maskkit_first():
    "With site disabled (no .pth), torchvision fails on this CPU torch unless maskkit is imported first."
    import sysconfig
    purelib = sysconfig.get_paths()["purelib"]  # with -S the child can't find the venv's site-packages itself
    broken = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.append({purelib!r}); import torchvision"],
                            capture_output=True, text=True, timeout=300)
    if not compat.torchvision_c_ops_load(): assert "torchvision::nms" in broken.stderr
    fixed = subprocess.run([sys.executable, "-S", "-c",
        f"import sys; sys.path.append({purelib!r}); "
        "import maskkit, torchvision; print(maskkit.compat._state['library'] is not None or 'real-ops')"],
        capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    loaded_real = compat.torchvision_c_ops_load()
    assert fixed.stdout.strip() == ("real-ops" if loaded_real else "True")

def test_papermill_kernel_imports(tmp_path):
    nbformat = pytest.importorskip("nbformat"); pm = pytest.importorskip("papermill")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import pytorch_grad_cam, facenet_pytorch, timm, torchvision\nprint('ok')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(dst), progress_bar=False, kernel_name="python3")
    out = nbformat.read(dst, as_version=4)
    assert "ok" in out.cells[0].outputs[0]["text"]
