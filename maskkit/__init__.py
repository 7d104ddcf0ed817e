__version__ = "0.1.0"
# Written by hand (nbdev only updates the version line above): keep it light, no heavy imports.
# The torchvision hook must be in place before anything imports torchvision (see nbs/00b_compat.ipynb).
from .compat import install_torchvision_hook as _install_hook
_install_hook()

# The public API, imported on first use so that `import maskkit` stays fast (see nbs/index.ipynb):
#   train_run(TrainParams(...)) -> Run, run_kfold, Predictor.from_run(run).predict(photos), score_submission, ...
_API = {
    "TrainParams": "experiment", "train_run": "experiment", "run_kfold": "experiment",
    "Predictor": "inference", "Run": "runs", "compare": "runs",
    "build_model": "models", "score_submission": "ensemble", "write_submission": "ensemble",
    "RECIPES": "recipes", "list_recipes": "recipes", "audit": "data", "DataError": "data",
}
_MODULES = ("analysis", "augment", "cli", "compat", "data", "datasets", "demo", "ensemble", "experiment", "faces",
            "inference", "labels", "losses", "metrics", "models", "recipes", "runs", "train")
__all__ = sorted(_API)


def __getattr__(name):
    import importlib
    if name in _API: return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    if name in _MODULES: return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'maskkit' has no attribute {name!r}")


def __dir__(): return sorted(set(globals()) | set(_API) | set(_MODULES))
