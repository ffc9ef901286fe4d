"""The hub path, offline: folders laid out as the hub repos are at the pinned revisions, read by the loader users run.

Only the repo location is redirected (``FALSEDEMO_HUB_MIRROR``); the loader calls ``datasets`` with the table's
config / data_dir / revision exactly as for the hub.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hub_layout import build_hub_mirror
from lm_eval_false_demos.core import datasets as fd
from lm_eval_false_demos.core import data_loading as dl
from lm_eval_false_demos.errors import FalseDemoError

SCRIPT_ONLY = ("financial_phrasebank", "ethos", "sick", "trec")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, data_dir):
    return build_hub_mirror(data_dir, tmp_path_factory.mktemp("hub_mirror"))


def test_table_pins_namespaced_sources():
    for key in fd.MAIN_DATASETS:
        hub = fd.get_spec(key).hub
        assert hub.repo.count("/") == 1, key
        assert set(fd.get_spec(key).splits) <= set(hub.rows), key
    for key in SCRIPT_ONLY:
        assert fd.get_spec(key).hub.revision == "refs/convert/parquet"
        assert fd.get_spec(key).hub.config is None
    assert fd.get_spec("sick").hub.repo == "RobZamp/sick"
    assert fd.get_spec("ethos").hub.data_dir == "binary"
    assert fd.get_spec("financial_phrasebank").hub.data_dir == "sentences_allagree"
    assert fd.get_spec("mrpc").hub.config == "mrpc" and fd.get_spec("mrpc").hub.revision == "main"


def test_mirror_is_laid_out_as_the_hub(mirror):
    assert (mirror / "nyu-mll/glue/mrpc/train-00000-of-00001.parquet").is_file()
    assert (mirror / "fancyzhx/dbpedia_14/dbpedia_14/test-00000-of-00001.parquet").is_file()
    assert (mirror / "takala/financial_phrasebank/sentences_allagree/train/0000.parquet").is_file()
    assert (mirror / "CogComp/trec/default/test/0000.parquet").is_file()
    assert not (mirror / "CogComp/trec/README.md").exists()
    metadata = json.loads(pq.read_schema(mirror / "CogComp/trec/default/test/0000.parquet").metadata[b"huggingface"])
    assert metadata["info"]["features"]["coarse_label"] == {
        "names": ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"], "_type": "ClassLabel"}
    medical = mirror / "curaihealth/medical_questions_pairs/data/train-00000-of-00001.parquet"
    assert json.loads(pq.read_schema(medical).metadata[b"huggingface"])["info"]["features"]["label"]["names"] == [
        "0", "1"]


def test_all_14_load_through_the_hub_path_with_the_local_fingerprint(mirror, hub_env, data_dir):
    hub_env.setenv(fd.HUB_MIRROR_ENV, str(mirror))
    from_hub = {key: dl.data_provenance(key) for key in fd.MAIN_DATASETS}
    examples_hub = dl.load_examples("medical_questions_pairs")
    hub_env.setenv(fd.DATA_DIR_ENV, str(data_dir))
    for key in fd.MAIN_DATASETS:
        local = dl.data_provenance(key)
        hub = from_hub[key]
        assert hub["source"]["kind"] == "hub" and local["source"]["kind"] == "local", key
        assert hub["source"]["repo"] == fd.get_spec(key).hub.repo
        assert hub["source"]["mirror"] == str((mirror / hub["source"]["repo"]).resolve())
        assert hub["split_rows"] == local["split_rows"] and hub["queries"] == local["queries"] > 0, key
        assert hub["fingerprint"] == local["fingerprint"], key
    # The explicit "0"/"1" -> different/similar mapping gives the local copy's labels (1 = similar).
    assert examples_hub == dl.load_examples("medical_questions_pairs")
    assert len({from_hub[key]["fingerprint"] for key in fd.MAIN_DATASETS}) == 14


def test_fingerprint_changes_with_one_row(data_dir, tmp_path, monkeypatch):
    before = dl.data_provenance("rte")["fingerprint"]
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.jsonl").write_text((data_dir / "rte" / "train.jsonl").read_text())
    lines = (data_dir / "rte" / "validation.jsonl").read_text().splitlines()
    row = json.loads(lines[5])
    row["label"] = 1 - row["label"]
    lines[5] = json.dumps(row)
    (tmp_path / "rte" / "validation.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    assert dl.data_provenance("rte")["fingerprint"] != before


def test_script_only_layout_gives_one_clear_line(tmp_path, hub_env):
    (tmp_path / "iamollas" / "ethos").mkdir(parents=True)
    (tmp_path / "iamollas" / "ethos" / "ethos.py").write_text("# a loading script\n")
    hub_env.setenv(fd.HUB_MIRROR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError) as error:
        dl.load_examples("ethos")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("could not load dataset 'ethos' from the hub, iamollas/ethos@refs/convert/parquet "
                              "data_dir binary")
    assert "Dataset scripts are no longer supported, but found ethos.py" in message
    assert "FALSEDEMO_DATA_DIR" in message and "falsedemo data pull --to DIR --datasets ethos" in message


def test_hub_label_names_other_than_documented_are_refused(tmp_path, hub_env, data_dir):
    import hub_layout

    hub_env.setitem(hub_layout.REPOS, "nyu-mll/glue", (hub_layout.MAIN, {"rte": ("rte", ["yes", "no"])}))
    build_hub_mirror(data_dir, tmp_path, keys=["rte"])
    hub_env.setenv(fd.HUB_MIRROR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"^dataset 'rte' from nyu-mll/glue@main config rte \(mirror folder "
                                             r".*\): label names \['yes', 'no'\] differ from the documented "
                                             r"\['entailment', 'not_entailment'\]; refusing"):
        dl.load_examples("rte")


def test_missing_split_on_the_hub_names_repo_and_split(tmp_path, hub_env, data_dir):
    build_hub_mirror(data_dir, tmp_path, keys=["trec"])
    (tmp_path / "CogComp/trec/default/test/0000.parquet").unlink()
    hub_env.setenv(fd.HUB_MIRROR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"^could not load dataset 'trec' from the hub, "
                                             r"CogComp/trec@refs/convert/parquet .*Unknown split \"test\".*"
                                             r"FALSEDEMO_DATA_DIR"):
        dl.load_examples("trec")


def test_unreachable_hub_names_dataset_repo_revision_and_ways_out(hub_env):
    hub_env.delenv(fd.HUB_MIRROR_ENV, raising=False)
    hub_env.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FalseDemoError) as error:
        dl.load_examples("trec")
    message = str(error.value)
    assert message.startswith("could not load dataset 'trec' from the hub, CogComp/trec@refs/convert/parquet: ")
    assert "FALSEDEMO_DATA_DIR" in message and "falsedemo data pull --to DIR --datasets trec" in message
    assert "\n" not in message


def test_lm_eval_results_file_records_the_hub_source_and_the_local_fingerprint(mirror, tiny_model_dir, tmp_path,
                                                                                data_dir):
    """The `lm_eval` command reads trec through the hub path (redirected to the mirror) and records it."""
    lm_eval = Path(sys.executable).with_name("lm_eval")
    env = {key: value for key, value in os.environ.items() if key != fd.DATA_DIR_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf_cache"),
               **{fd.HUB_MIRROR_ENV: str(mirror)})
    command = [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={tiny_model_dir('llama')},dtype=float32",
               "--tasks", "falsedemo_trec_permuted", "--num_fewshot", "2", "--limit", "4", "--device", "cpu",
               "--batch_size", "4", "--output_path", str(tmp_path / "out")]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    metadata = json.loads(results_file.read_text())["configs"]["falsedemo_trec_permuted"]["metadata"]
    provenance = metadata["data_provenance"]
    assert provenance["source"] == {"kind": "hub", "repo": "CogComp/trec", "revision": "refs/convert/parquet",
                                    "config": None, "data_dir": None, "resolved_commit": None,
                                    "mirror": str((mirror / "CogComp/trec").resolve())}
    assert provenance["split_rows"] == {"train": 5452, "test": 500}
    dl._CACHE.clear()
    assert provenance["fingerprint"] == dl.data_provenance("trec")["fingerprint"]  # the local copy (conftest)
    assert metadata["data_source"].startswith("hub:CogComp/trec@refs/convert/parquet mirror:")


def test_lm_eval_command_reports_a_failed_hub_load_in_one_line(tiny_model_dir, tmp_path):
    (tmp_path / "CogComp" / "trec").mkdir(parents=True)
    (tmp_path / "CogComp" / "trec" / "trec.py").write_text("# a loading script\n")
    lm_eval = Path(sys.executable).with_name("lm_eval")
    env = {key: value for key, value in os.environ.items() if key != fd.DATA_DIR_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **{fd.HUB_MIRROR_ENV: str(tmp_path)})
    command = [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={tiny_model_dir('llama')}",
               "--tasks", "falsedemo_trec_permuted", "--limit", "2", "--device", "cpu"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("lm_eval: error:")]
    assert line.startswith("lm_eval: error: could not load dataset 'trec' from the hub, "
                           "CogComp/trec@refs/convert/parquet (mirror folder ")
    assert "Dataset scripts are no longer supported, but found trec.py" in line
    assert line.endswith("`falsedemo data pull --to DIR --datasets trec`")
