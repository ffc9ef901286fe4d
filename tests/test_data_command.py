"""``falsedemo data pull|check``: a local copy written from the (offline, hub-layout) repos, and validated."""

import json
import shutil

import pytest

from hub_layout import build_hub_mirror
from lm_eval_false_demos.core import datasets as fd
from lm_eval_false_demos.core import data_loading as dl
from lm_eval_false_demos.cli.main import main

PULLED = ["trec", "medical_questions_pairs", "mrpc", "ethos", "sst2_ab"]


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pull_writes_the_documented_layout_from_the_hub(tmp_path, hub_env, data_dir, capsys):
    mirror = build_hub_mirror(data_dir, tmp_path / "mirror", keys=PULLED + ["sst2"])
    hub_env.setenv(fd.HUB_MIRROR_ENV, str(mirror))
    target = tmp_path / "copy"
    assert main(["data", "pull", "--to", str(target), "--datasets", ",".join(PULLED)]) == 0
    out = capsys.readouterr().out
    assert f"wrote 8 files for 5 dataset(s) into {target}" in out
    assert "| trec                    | test       |  500 |      500 |" in out
    assert sorted(p.name for p in target.iterdir()) == ["ethos", "medical_questions_pairs", "mrpc", "sst2", "trec"]
    for key, splits in {"trec": ["test", "train"], "mrpc": ["train", "validation"], "ethos": ["train"],
                        "medical_questions_pairs": ["train"], "sst2": ["train", "validation"]}.items():
        assert sorted(p.stem for p in (target / key).glob("*.jsonl")) == splits
        for split in splits:  # hub columns and label ids: the same rows as the copy the mirror was built from
            assert _rows(target / key / f"{split}.jsonl") == _rows(data_dir / key / f"{split}.jsonl"), (key, split)
    source = json.loads((target / "ethos" / "hub_source.json").read_text())
    assert source == {"kind": "hub", "repo": "iamollas/ethos", "revision": "refs/convert/parquet", "config": None,
                      "data_dir": "binary", "resolved_commit": None,
                      "mirror": str((mirror / "iamollas/ethos").resolve()), "split_rows": {"train": 998}}
    hub_print = dl.data_provenance("trec")["fingerprint"]
    hub_env.setenv(fd.DATA_DIR_ENV, str(target))
    pulled = dl.data_provenance("trec")
    assert pulled["fingerprint"] == hub_print
    assert pulled["source"]["kind"] == "local" and pulled["source"]["pulled_from"]["repo"] == "CogComp/trec"
    # A second pull refuses to replace the files, before reading anything.
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "pull", "--to", str(target), "--datasets", "trec"])
    assert exit_info.value.code == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_check_prints_one_table_for_the_shared_copies(data_dir, capsys):
    assert main(["data", "check", str(data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 25  # header, rule, one row per split the benchmark uses
    assert any(line.replace(" ", "") == "|sst2|train|6920|67349|negative3310,positive3610|ok,fewerrowsthanthehub|"
               for line in table)
    assert any(line.replace(" ", "") == "|medical_questions_pairs|train|3048|3048|different1524,similar1524|ok|"
               for line in table)
    assert not any("error" in line for line in lines)


def test_check_reports_every_broken_split_and_exits_1(data_dir, tmp_path, capsys):
    for key in ("rte", "trec", "sst2"):
        shutil.copytree(data_dir / key, tmp_path / key)
    (tmp_path / "rte" / "validation.jsonl").unlink()
    lines = (tmp_path / "trec" / "test.jsonl").read_text().splitlines()
    lines[6] = json.dumps({**json.loads(lines[6]), "coarse_label": 6})
    (tmp_path / "trec" / "test.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "sst2" / "validation.jsonl").write_text("")
    assert main(["data", "check", str(tmp_path), "--datasets", "rte,trec,sst2"]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: dataset 'rte': split 'validation' not found in local folder {tmp_path / 'rte'} (expected "
        "validation.jsonl; present: train)",
        f"error: dataset 'trec': {tmp_path / 'trec' / 'test.jsonl'}:7: coarse_label 6 is not one of the ids 0..5 "
        "(0 ABBR, 1 ENTY, 2 DESC, 3 HUM, 4 LOC, 5 NUM)",
        f"error: dataset 'sst2': {tmp_path / 'sst2' / 'validation.jsonl'} is empty; allowed: one JSON object per "
        "line with sentence, label",
    ]
    assert "3 problem(s) in 3 of 6 splits" in out


def test_data_command_bad_arguments_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"falsedemo data: error: data folder {tmp_path / 'nowhere'} does not exist; expected a folder of "
        "<key>/<split>.jsonl")
    with pytest.raises(SystemExit):
        main(["data", "pull", "--to", str(tmp_path), "--datasets", "imdb"])
    assert "unknown dataset key 'imdb'" in capsys.readouterr().err
