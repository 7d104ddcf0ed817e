import pytest

@pytest.fixture(autouse=True)
def _cache_outside_project(tmp_path_factory, monkeypatch):
    "Face-crop caches of test data sets go to a temporary folder, not to the project's data/cache."
    monkeypatch.setenv("MASKKIT_CACHE", str(tmp_path_factory.mktemp("maskkit-cache")))
