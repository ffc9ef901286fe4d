"""Test-wide settings: offline hub, local data copies, tiny models from tiny_models.py."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FALSEDEMO_DATA_DIR", str(SHARED_DATA))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import ARCHITECTURES, build_tiny_model, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"local dataset copies not found at {SHARED_DATA}; set FALSEDEMO_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny_model(request):
    """(arch, model, tokenizer) for every supported architecture."""
    model, tokenizer = build_tiny_model(request.param)
    return request.param, model, tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: a saved tiny model folder for ``arch`` (cached per session)."""
    cache = {}

    def make(arch: str = "llama") -> Path:
        if arch not in cache:
            cache[arch] = save_tiny_model(arch, tmp_path_factory.mktemp(f"tiny_{arch}"))
        return cache[arch]

    return make


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """Hub mode for the dataset loader: no local copy, a private ``datasets`` cache, an empty loader cache."""
    import datasets

    from lm_eval_false_demos.core import datasets as fd
    from lm_eval_false_demos.core import data_loading as dl

    monkeypatch.delenv(fd.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    dl._CACHE.clear()
    yield monkeypatch
    dl._CACHE.clear()
