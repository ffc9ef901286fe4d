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
# The local dataset copies: FALSEDEMO_DATA_DIR, else ../shared/data beside the clone (this project's layout).
DATA_DIR = Path(os.environ.setdefault("FALSEDEMO_DATA_DIR", str(SHARED_DATA)))
NO_DATA = (f"needs the local dataset copies, and FALSEDEMO_DATA_DIR={DATA_DIR} is not a folder (a fresh clone has "
           "no ../shared/data): write one with `falsedemo data pull --to DIR` and set FALSEDEMO_DATA_DIR=DIR")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import ARCHITECTURES, build_tiny_model, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(NO_DATA)
    return DATA_DIR


@pytest.fixture(autouse=True)
def _skip_where_the_data_is_missing(monkeypatch):
    """Without the local copies, a test that reads a dataset from them is skipped, saying why, at the read
    (tests of the built-in unnatural dataset, of files and of arguments still run); tests pointing
    FALSEDEMO_DATA_DIR at folders of their own are not affected."""
    if DATA_DIR.is_dir():
        return
    from lm_eval_false_demos.core import data_loading, data_readers

    real = data_readers.read_local_split

    def read_local_split(spec, folder, split, from_env=True):
        if Path(folder).absolute().is_relative_to(DATA_DIR.absolute()):
            pytest.skip(NO_DATA)
        return real(spec, folder, split, from_env)

    monkeypatch.setattr(data_readers, "read_local_split", read_local_split)
    monkeypatch.setattr(data_loading, "read_local_split", read_local_split)


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


@pytest.fixture
def no_loading(monkeypatch):
    """Any model or task-data load fails the test: bad input must be reported before anything loads."""
    import functools

    import transformers
    from lm_eval.models.huggingface import HFLM

    from lm_eval_false_demos.integrations import sweep_prompts

    def loaded(*args, **kwargs):
        raise AssertionError("a model or data was loaded before the bad input was reported")

    # Every command loads through lm-eval's registry (integrations.loading.create_model), so HFLM is what loads
    # (our wrappers' constructors check their own arguments first, so create_model itself may run);
    # wraps keeps HFLM's signature visible: the model-arg typo check reads it.
    monkeypatch.setattr(HFLM, "__init__", functools.wraps(HFLM.__init__)(loaded))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loaded)
    monkeypatch.setattr(sweep_prompts, "load_tasks", loaded)  # every analysis's prompts come from here
