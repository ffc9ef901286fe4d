"""Dataset table and loading: local copies, label words by class name, partitions, clear failures."""

import json

import pytest

from lm_eval_false_demos.core import datasets as fd
from lm_eval_false_demos.core import data_loading as dl
from lm_eval_false_demos.errors import FalseDemoError

SPEC_KEYS = (
    "sst2 poem_sentiment financial_phrasebank ethos tweet_eval_hate tweet_eval_stance_atheism "
    "tweet_eval_stance_feminist medical_questions_pairs mrpc sick rte ag_news trec dbpedia_14"
).split()


@pytest.fixture(autouse=True)
def fresh_cache():
    dl._CACHE.clear()
    yield
    dl._CACHE.clear()


def test_table_has_the_spec_keys():
    assert fd.MAIN_DATASETS == tuple(SPEC_KEYS)
    assert set(fd.DATASETS) == set(SPEC_KEYS) | {"unnatural", "sst2_ab"}
    for spec in fd.DATASETS.values():
        assert spec.demo_format.count(" {label}") == 1
        assert len(set(spec.label_word_list)) == spec.num_classes


def test_label_words_follow_class_names():
    assert fd.get_spec("trec").label_word_list == ["Description", "Entity", "Abbreviation", "Person", "Number",
                                                  "Location"]
    assert fd.get_spec("tweet_eval_hate").label_words == {"non-hate": "favor", "hate": "against"}
    assert fd.get_spec("dbpedia_14").label_words["WrittenWork"] == "Book"
    assert fd.get_spec("poem_sentiment").label_word_list == ["negative", "positive", "no impact"]


def test_trec_maps_coarse_label_ids_by_name(data_dir):
    rows = [json.loads(line) for line in (data_dir / "trec" / "test.jsonl").read_text().splitlines()]
    _, queries = dl.load_examples("trec")
    spec = fd.get_spec("trec")
    by_uid = {q.uid: q for q in queries}
    coarse_names = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    for index in range(50):
        expected_name = coarse_names[rows[index]["coarse_label"]]
        assert rows[index]["fine_label_name"].startswith(expected_name)
        assert spec.class_names[by_uid[f"test:{index}"].label] == expected_name
    assert rows[0]["text"] == "How far is it from Denver to Aspen ?"
    assert spec.label_word_list[by_uid["test:0"].label] == "Number"


def test_poem_sentiment_drops_mixed(data_dir):
    pool, queries = dl.load_examples("poem_sentiment")
    raw = [json.loads(line) for line in (data_dir / "poem_sentiment" / "train.jsonl").read_text().splitlines()]
    assert len(pool) == sum(row["label"] != 3 for row in raw) < len(raw)
    assert {e.label for e in pool} == {0, 1, 2}
    assert len(queries) == 104


def test_single_split_partition_is_disjoint_and_fixed():
    pool, queries = dl.load_examples("ethos")
    assert {e.uid for e in pool}.isdisjoint(e.uid for e in queries)
    assert len(pool) + len(queries) == 998
    dl._CACHE.clear()
    again_pool, again_queries = dl.load_examples("ethos")
    assert again_pool == pool and again_queries == queries


def test_unnatural_is_built_in_with_thirty_objects_per_class(monkeypatch):
    monkeypatch.delenv(fd.DATA_DIR_ENV, raising=False)
    pool, queries = dl.load_examples("unnatural")
    assert len(pool) == len(queries) == 90
    names = fd.get_spec("unnatural").class_names
    by_class = {name: {e.fields[0] for e in pool if names[e.label] == name} for name in names}
    assert all(len(objects) == 30 for objects in by_class.values())
    assert {"rabbit", "fox"} <= by_class["animal"] and "luge" in by_class["sport"]


def test_sst2_ab_reads_the_sst2_folder_and_strips_text():
    pool, queries = dl.load_examples("sst2_ab")
    sst2_pool, _ = dl.load_examples("sst2")
    assert [e.fields for e in pool[:5]] == [e.fields for e in sst2_pool[:5]]
    assert not pool[0].fields[0].endswith(" ")
    assert len(queries) == 872


def test_unknown_key():
    with pytest.raises(FalseDemoError, match=r"unknown dataset key 'sst3'.*allowed: sst2, poem_sentiment"):
        fd.get_spec("sst3")
    with pytest.raises(FalseDemoError, match="unknown dataset key"):
        dl.load_examples("imdb")


def _write(folder, split, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_local_folder_missing_split(tmp_path, monkeypatch):
    _write(tmp_path / "rte", "train", [{"sentence1": "a", "sentence2": "b", "label": 0}])
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"'rte': split 'validation' not found .*present: train.*FALSEDEMO_DATA_DIR"):
        dl.load_examples("rte")


def test_local_folder_missing_column(tmp_path, monkeypatch):
    _write(tmp_path / "rte", "train", [{"sentence1": "a", "label": 0}])
    _write(tmp_path / "rte", "validation", [{"sentence1": "a", "sentence2": "b", "label": 0}])
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"^dataset 'rte': .*/rte/train.jsonl:1 lacks column\(s\) sentence2; "
                                             r"needed: sentence1, sentence2, label$"):
        dl.load_examples("rte")


def test_local_folder_empty_file(tmp_path, monkeypatch):
    _write(tmp_path / "rte", "train", [{"sentence1": "a", "sentence2": "b", "label": 0}])
    _write(tmp_path / "rte", "validation", [])
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"^dataset 'rte': .*/rte/validation.jsonl is empty; allowed: one JSON "
                                             r"object per line with sentence1, sentence2, label$"):
        dl.load_examples("rte")


def test_local_folder_blank_line(tmp_path, monkeypatch):
    _write(tmp_path / "sst2", "train", [{"sentence": "fine", "label": 1}])
    lines = ['{"sentence": "a", "label": 0}', "", '{"sentence": "b", "label": 1}']
    (tmp_path / "sst2" / "validation.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"^dataset 'sst2': .*/sst2/validation.jsonl:2 is a blank line; allowed: "
                                             r"one JSON object per line with sentence, label, no blank lines$"):
        dl.load_examples("sst2")


def test_local_folder_not_json(tmp_path, monkeypatch):
    _write(tmp_path / "sst2", "train", [{"sentence": "fine", "label": 1}])
    (tmp_path / "sst2" / "validation.jsonl").write_text('{"sentence": "a", "label": 0}\n{"sentence": "b",\n')
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"^dataset 'sst2': .*/sst2/validation.jsonl:2 is not JSON "):
        dl.load_examples("sst2")


def test_label_id_out_of_range_names_file_line_and_allowed_ids(tmp_path, monkeypatch):
    _write(tmp_path / "rte", "train", [{"sentence1": "a", "sentence2": "b", "label": 0},
                                       {"sentence1": "a", "sentence2": "b", "label": 2}])
    _write(tmp_path / "rte", "validation", [{"sentence1": "a", "sentence2": "b", "label": 0}])
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"^dataset 'rte': .*/rte/train.jsonl:2: label 2 is not one of the ids "
                                             r"0\.\.1 \(0 entailment, 1 not_entailment\)$"):
        dl.load_examples("rte")


def test_text_that_is_not_a_string(tmp_path, monkeypatch):
    _write(tmp_path / "sst2", "train", [{"sentence": None, "label": 1}])
    _write(tmp_path / "sst2", "validation", [{"sentence": "b", "label": 1}])
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError,
                       match=r"^dataset 'sst2': .*/sst2/train.jsonl:1: sentence is None; allowed: text$"):
        dl.load_examples("sst2")


def test_unlabelled_split_is_an_error(tmp_path, monkeypatch):
    _write(tmp_path / "sst2", "train", [{"sentence": "fine", "label": 1}])
    _write(tmp_path / "sst2", "validation", [{"sentence": "fine", "label": -1}])
    monkeypatch.setenv(fd.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(FalseDemoError, match=r"validation.jsonl:1: label -1 is not one of the ids 0\.\.1 .*unlabelled"):
        dl.load_examples("sst2")
