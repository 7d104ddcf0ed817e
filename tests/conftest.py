import pytest

@pytest.fixture(autouse=True)
def _sandbox(tmp_path_factory, monkeypatch):
    "Every test writes its face caches and reports (runs, figures, submissions) to temporary folders, never to data/ or reports/."
    monkeypatch.setenv("MASKKIT_CACHE", str(tmp_path_factory.mktemp("maskkit-cache")))
    monkeypatch.setenv("MASKKIT_REPORTS", str(tmp_path_factory.mktemp("maskkit-reports")))
