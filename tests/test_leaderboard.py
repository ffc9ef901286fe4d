"""falsedemo leaderboard from fixture results (tests/fixtures/leaderboard, made by make_fixtures.py).

Expected numbers are worked out by hand from the fixture values, not recomputed by the code under test.
"""

import csv
import html
import json
import re
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lm_eval_false_demos.cli import main as cli
from lm_eval_false_demos import leaderboard

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "leaderboard"
HOSTILE_MODEL = "<script>alert('pwned')</script>"
HOSTILE_CONFIG = "note=</script><img src=x onerror=alert(1)>&amp;"

# gemma-3-270m, base configuration (dtype=float32), merged from three lm-eval files and one sweep:
#   correct:  sst2 .70, rte .60, trec .50, ag_news .80 (lm-eval), mrpc .62 (sweep final layer) -> 3.22/5
#   permuted: sst2 .40, rte .45, trec .30 (newer duplicate beats .35), mrpc .50 (sweep)      -> 1.65/4
#   random:   sst2 .55, rte .50 -> .525;  half: sst2 .60, rte .55 -> .575 (lm-eval beats the sweep's .60)
#   gaps are paired: permuted (.30 + .15 + .20 + .12) / 4; random (.15 + .10) / 2; half (.10 + .05) / 2
#   sweep curves: gap opens at layer 8, permuted peaks at layer 12 (.58, .53, .56) over finals (.41, .44, .50)
GEMMA_BASE = {
    "correct_acc": 0.644, "correct_datasets": 5, "permuted_acc": 0.4125, "permuted_datasets": 4,
    "random_acc": 0.525, "random_datasets": 2, "half_acc": 0.575, "half_datasets": 2,
    "gap_permuted": 0.1925, "gap_random": 0.125, "gap_half": 0.075,
    "critical_layer": 8, "critical_layer_fraction": 8 / 18, "early_exit_layer": 12,
    "early_exit_gain": (0.58 + 0.53 + 0.56 - 0.41 - 0.44 - 0.50) / 3,
    "heads_gap_recovered": 0.39, "random_heads_gap_recovered": 0.04,
    # pooled over sst2, rte, trec: mean correct .6, permuted .4667, top heads zeroed .5307 -> 1 - .0693/.1333;
    # the 5 random draws zeroed: .4767, .47, .4683, .4647, .4803 -> .075, .025, .0125, -.015, .1025
    "heads_pooled_gap_recovered": 0.48, "random_heads_pooled_gap_recovered": 0.04,
    "random_heads_pooled_gap_recovered_sd": statistics.stdev([0.075, 0.025, 0.0125, -0.015, 0.1025]),
    "parameters": 268098176, "layers": 18,
}
GEMMA_EXIT9 = {"correct_acc": 0.68, "permuted_acc": 0.52, "gap_permuted": 0.16, "correct_datasets": 1}
SMOLLM = {"correct_acc": 0.55, "permuted_acc": 0.50, "gap_permuted": 0.05, "parameters": 134515008}
BROKEN = [
    "a_list.json", "deeply_nested.json", "empty.json", "foreign.json", "heads_empty.json", "not_utf8.json",
    "results_bad_model_args.json", "results_nan.json", "results_other_benchmark.json", "results_truncated.json",
    "sweep_future.json", "sweep_partial.json",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    output = tmp_path_factory.mktemp("leaderboard") / "out"
    board, paths = leaderboard.build([FIXTURES], output)
    return board, paths


def summaries_by_config(board):
    return {(s["model"], s["config"]): s for s in (leaderboard.summarise(row) for row in board.ordered_rows())}


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return {(row["model"], row["config"]): row for row in csv.DictReader(stream)}


def test_rows_are_one_per_configuration(built):
    board, _ = built
    assert set(summaries_by_config(board)) == {
        ("gemma-3-270m", "dtype=float32"),
        ("gemma-3-270m", "dtype=float32,exit_layer=9"),
        ("HuggingFaceTB/SmolLM2-135M", "revision=93efa2f097d58c2a74874c7e644dbc9b0cee75a2"),
        (HOSTILE_MODEL, HOSTILE_CONFIG),
    }


@pytest.mark.parametrize("config, expected", [
    (("gemma-3-270m", "dtype=float32"), GEMMA_BASE),
    (("gemma-3-270m", "dtype=float32,exit_layer=9"), GEMMA_EXIT9),
    (("HuggingFaceTB/SmolLM2-135M", "revision=93efa2f097d58c2a74874c7e644dbc9b0cee75a2"), SMOLLM),
])
def test_numbers_agree_in_every_format(built, config, expected):
    board, paths = built
    summary = summaries_by_config(board)[config]
    from_csv = csv_rows(paths["csv"])[config]
    md_line = next(line for line in paths["markdown"].read_text(encoding="utf-8").splitlines()
                   if line.startswith(f"| {config[0]} [{html.escape(config[1], quote=False)}] "))
    md_cells = [cell.strip() for cell in md_line.strip("|").split("|")]
    md_keys = [c.key for c in leaderboard.MARKDOWN_COLUMNS]
    page_rows = parse_page_rows(paths["html"])
    page_row = next(row for row in page_rows if (row["model"], row["config"]) == config)
    page_data = page_json(paths["html"])[page_row["index"]]
    columns = {c.key: c for c in leaderboard.COLUMNS}
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, abs=1e-9), key
        assert float(from_csv[key]) == pytest.approx(value, abs=1e-6), key
        assert page_data[key] == pytest.approx(value, abs=1e-9), key
        # cells show 3 decimals: equal to the input up to rounding
        tolerance = 0.0005 + 1e-9 if columns[key].kind in ("acc", "signed") else 0
        if key in page_row:
            assert float(page_row[key].split(" ")[0]) == pytest.approx(value, abs=tolerance), key
        if key in md_keys:
            cell = md_cells[md_keys.index(key)]
            assert float(cell.split(" ")[0]) == pytest.approx(value, abs=tolerance), key
            if key.endswith("_acc"):
                assert cell.endswith(f"({summary[key[:-4] + '_datasets']}/14)")  # fewer than 14 datasets run
    if config == ("gemma-3-270m", "dtype=float32"):  # layer 8 of 18, also as a fraction of depth
        assert page_row["critical_layer"] == "8 (0.44)" and md_cells[md_keys.index("critical_layer")] == "8 (0.44)"


def test_identity_versions_and_sources(built):
    board, paths = built
    base = csv_rows(paths["csv"])[("gemma-3-270m", "dtype=float32")]
    # the packaged GGUF's file hash, named by both the lm-eval wrapper info and the sweep's identity
    assert base["identity"] == "GGUF gemma-3-270m-Q4_K_M.gguf sha256:5f1c0e0d5b0a7c2b9e4f3a1d8c6b2e7f0a9d4c3b2a1f0e9d8c7b6a5f4e3d2c1b"
    assert (base["k"], base["n_per_dataset"], base["data_source"]) == ("40", "200", "local")
    assert (base["plugin_version"], base["lm_eval_version"], base["transformers_version"]) == ("0.1.0", "0.4.13", "4.57.1")
    assert base["date"] == "2025-01-04"  # the sweep is the newest of the row's four files
    assert base["files"] == "4"  # two lm-eval files, the sweep and the heads file
    assert base["false_heads"] == "14:2;16:1" and base["seed"] == "1234"
    smol = csv_rows(paths["csv"])[("HuggingFaceTB/SmolLM2-135M", "revision=93efa2f097d58c2a74874c7e644dbc9b0cee75a2")]
    assert smol["identity"] == "sha:93efa2f097d58c2a74874c7e644dbc9b0cee75a2"  # the commit, said once
    assert smol["layers"] == ""  # plain hf records no layer count
    assert (smol["k"], smol["n_per_dataset"]) == ("20", "100")


def test_broken_files_are_skipped_with_a_warning_naming_them(built):
    board, _ = built
    for name in BROKEN:
        assert any(name in message and "skipped" in message for message in board.warnings), name
    duplicate = [message for message in board.warnings if message.startswith("duplicate")]
    assert len(duplicate) == 1
    assert "trec/permuted" in duplicate[0] and "results_2025-01-03" in duplicate[0]
    assert not any("partial-model" in str(key) or "nan-model" in str(key) for key in summaries_by_config(board))


def test_hostile_strings_stay_text(built):
    board, paths = built
    page = paths["html"].read_text(encoding="utf-8")
    # exactly the page's own two script elements, and no injected markup
    assert len(re.findall(r"<script\b", page)) == 2
    assert "<img" not in page and "onerror=alert(1)>" not in page
    assert html.escape(HOSTILE_MODEL) in page
    rows = parse_page_rows(paths["html"])
    hostile = next(row for row in rows if row["model"] == HOSTILE_MODEL)
    assert hostile["config"] == HOSTILE_CONFIG
    assert page_json(paths["html"])[hostile["index"]]["model"] == HOSTILE_MODEL
    embedded = page.split('id="leaderboard-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    # spreadsheets would run a cell starting with "=": the CSV quotes it as text
    assert csv_rows(paths["csv"])[(HOSTILE_MODEL, HOSTILE_CONFIG)]["transformers_version"].startswith("'=HYPERLINK")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown
    json.loads(paths["json"].read_text(encoding="utf-8"))  # strict JSON


def test_page_is_self_contained_and_small_by_default(built):
    _, paths = built
    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "Content-Security-Policy" in page
    head = page.split("<thead>", 1)[1].split("</thead>", 1)[0]
    assert re.findall(r'data-key="([a-z_]+)"', head) == list(leaderboard.columns.DEFAULT_KEYS)
    assert page.count('<details class="detail"') == 4  # one detail per row
    assert page.count('<figure class="curves"') == 1  # only the base gemma row has a sweep
    figure = page.split('<figure class="curves"', 1)[1]
    assert len(re.findall(r'<polyline class="curve"', figure)) == 2  # correct, permuted
    points = re.search(r'data-setting="correct"[^>]*points="([^"]+)"', figure).group(1).split()
    assert len(points) == 19
    # rows sorted by the gap, largest first
    gaps = [row["gap_permuted"] for row in parse_page_rows(paths["html"])]
    assert [float(gap) for gap in gaps] == sorted((float(gap) for gap in gaps), reverse=True)


def test_sweep_numbers_follow_the_paper_with_the_sweeps_own_functions():
    from lm_eval_false_demos.analysis import layer_curves
    from lm_eval_false_demos.leaderboard.headline import layer_statistics

    payload = json.loads((FIXTURES / "sweeps" / "sweep_gemma-3-270m_2025-01-04T09-00-00.000000" / "sweep.json").read_text())
    curves = {(t["dataset"], t["setting"]): t["per_layer"]["calibrated_acc"] for t in payload["tasks"].values()}
    datasets = sorted({d for d, s in curves if s == "permuted"})
    correct = [statistics.fmean(curves[(d, "correct")][i] for d in datasets) for i in range(19)]
    permuted = [statistics.fmean(curves[(d, "permuted")][i] for d in datasets) for i in range(19)]
    computed = layer_statistics(correct, permuted)
    assert computed["critical_layer"] == GEMMA_BASE["critical_layer"]
    assert computed["early_exit_layer"] == GEMMA_BASE["early_exit_layer"]
    assert computed["early_exit_gain"] == pytest.approx(GEMMA_BASE["early_exit_gain"])
    # one definition: a gap equal to half the final one up to rounding counts (the sweep's tolerance)
    tie = layer_statistics([0.5, 0.5 + 0.3 - 0.2, 0.9, 0.5 + 0.5 - 0.3], [0.5, 0.5, 0.5, 0.5])
    assert tie["critical_layer"] == layer_curves.critical_layer([0.0, 0.3 - 0.2, 0.4, 0.5 - 0.3]) == 1


def test_task_and_model_args_parsing():
    assert leaderboard.parse_task_name("falsedemo_tweet_eval_stance_atheism_permuted") == (
        "tweet_eval_stance_atheism", "permuted")
    assert leaderboard.parse_task_name("arc_easy") is None
    assert leaderboard.parse_model_args("pretrained=a/b,exit_layer=9, dtype = float32") == {
        "pretrained": "a/b", "exit_layer": "9", "dtype": "float32"}
    assert leaderboard.parse_model_args({"pretrained": "a", "exit_layer": 9}) == {"pretrained": "a", "exit_layer": "9"}
    assert leaderboard.parse_model_args(3) is None


# ------------------------------------------------------------------------------- page parsing


class _TableParser(HTMLParser):
    """The page table's rows: {column key: cell text as a browser shows it}, the model cell split into its
    link (model), config and note, and the row's index into the embedded data."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.in_body = False
        self.rows, self.key, self.part = [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append({"index": int(attrs["data-row"])})
        elif self.in_body and tag == "td":
            self.key, self.part = attrs["data-key"], attrs["data-key"]
            self.rows[-1][self.key] = ""
        elif self.key == "model" and tag in ("a", "span"):
            self.part = {"a": "model", "span": (attrs.get("class") or "note")}[tag]
            self.rows[-1].setdefault(self.part, "")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False
        elif tag == "td":
            self.key = self.part = None
        elif tag in ("a", "span") and self.key == "model":
            self.part = "model_cell"

    def handle_data(self, data):
        if self.part and self.part != "model_cell":
            self.rows[-1][self.part] += data


def parse_page_rows(path):
    parser = _TableParser()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return parser.rows


def page_json(path):
    page = Path(path).read_text(encoding="utf-8")
    return json.loads(page.split('id="leaderboard-data">', 1)[1].split("</script>", 1)[0])


def test_k_of_a_heads_experiment_does_not_join_the_accuracy_k(tmp_path):
    """The row's k describes its accuracy columns; heads --evaluate may use another k for its ablations."""
    import json

    for folder in ("sweeps", "heads"):
        shutil.copytree(FIXTURES / folder, tmp_path / folder)
    (heads_file,) = (tmp_path / "heads").rglob("heads.json")
    payload = json.loads(heads_file.read_text())
    payload["config"]["k"] = 16
    heads_file.write_text(json.dumps(payload))
    _, paths = leaderboard.build([tmp_path], tmp_path / "out")
    row = csv_rows(paths["csv"])[("gemma-3-270m", "dtype=float32")]
    assert row["k"] == "40" and row["false_heads"] == "14:2;16:1"


# ------------------------------------------------------------------------- inputs and outputs


def run_cli(*argv):
    return cli.main(["leaderboard", *map(str, argv)])


def test_missing_or_empty_inputs_write_nothing(tmp_path, capsys):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--results", FIXTURES / "results", tmp_path / "typo", "--output", output)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "no such file or folder" in error and "typo" in error
    assert not output.exists()
    with pytest.raises(SystemExit) as exit_info:  # a folder of broken files only: no row, nothing written
        run_cli("--results", FIXTURES / "broken", "--output", output)
    assert exit_info.value.code == 2 and "no usable results file" in capsys.readouterr().err
    assert not output.exists()


def test_an_existing_leaderboard_is_replaced_only_with_force(tmp_path, capsys):
    output = tmp_path / "out"
    assert run_cli("--results", FIXTURES / "results", "--output", output, "--bootstrap_iters", "0") == 0
    before = (output / "leaderboard.csv").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--results", FIXTURES / "sweeps", "--output", output)
    assert exit_info.value.code == 2 and "--force" in capsys.readouterr().err
    assert (output / "leaderboard.csv").read_bytes() == before
    assert run_cli("--results", FIXTURES / "sweeps", "--output", output, "--force") == 0
    assert (output / "leaderboard.csv").read_bytes() != before
    file_output = tmp_path / "a_file"
    file_output.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--results", FIXTURES / "results", "--output", file_output)
    assert exit_info.value.code == 2 and "is a file" in capsys.readouterr().err


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0,
                    reason="root ignores folder permissions")
def test_read_only_output_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_cli("--results", FIXTURES / "results", "--output", locked / "out")
        assert exit_info.value.code == 2 and "writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_read_only_output_check_without_permissions(tmp_path, monkeypatch):
    """The same check where the suite runs as root: os.access decides, before anything is read."""
    import os

    from lm_eval_false_demos.errors import FalseDemoError
    from lm_eval_false_demos.leaderboard import publish

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(FalseDemoError, match="cannot be created: .* is not a writable folder"):
        publish.check_output(tmp_path / "new", force=False)
    (tmp_path / "old").mkdir()
    with pytest.raises(FalseDemoError, match="is not writable"):
        publish.check_output(tmp_path / "old", force=True)


def lm_eval_file(folder, name, model_args, scores, num_layers=18, groups=None, metadata=None, k=4, model="hf-earlyexit",
                 limit=None):
    payload = {
        "results": {task: {"alias": task, "calibrated_acc,none": value} for task, value in scores.items()},
        "groups": groups or {},
        "configs": {task: {"metadata": dict(metadata or {})} for task in scores},
        "n-samples": {task: {"effective": 30} for task in scores},
        "n-shot": {task: k for task in scores},
        "config": {"model": model, "model_args": model_args, "fewshot_seed": 1234, "limit": limit,
                   **({"falsedemo": {"num_layers": num_layers, "label_scoring": "first"}} if model != "hf" else {})},
        "date": 1_700_000_000.0,
    }
    path = folder / name
    path.write_text(json.dumps(payload))
    return path


def test_exit_layer_minus_one_and_L_are_one_row(tmp_path):
    lm_eval_file(tmp_path, "results_a.json", "pretrained=m,exit_layer=-1.0", {"falsedemo_trec_correct": 0.6})
    lm_eval_file(tmp_path, "results_b.json", {"pretrained": "m", "exit_layer": 18}, {"falsedemo_trec_permuted": 0.4})
    board, _ = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=0)
    (row,) = board.ordered_rows()
    assert row.config_text == "exit_layer=18"
    assert leaderboard.summarise(row)["gap_permuted"] == pytest.approx(0.2)


def test_readout_fields_outside_model_args_split_rows(tmp_path):
    """The chat rendering recorded in task metadata (or lm-eval's top-level template hash) is part of the row
    key; raw prompts are the default. One home for such fields: rowkey.READOUT_FIELDS."""
    raw = lm_eval_file(tmp_path, "results_a.json", "pretrained=m", {"falsedemo_trec_correct": 0.6},
                       metadata={"prompt_mode": "raw", "chat_template_sha256": None})
    chat = lm_eval_file(tmp_path, "results_b.json", "pretrained=m", {"falsedemo_trec_correct": 0.7},
                        metadata={"prompt_mode": "chat_multiturn", "chat_template_sha256": "abc123"})
    old = lm_eval_file(tmp_path, "results_c.json", "pretrained=m", {"falsedemo_trec_permuted": 0.5})
    theirs = lm_eval_file(tmp_path, "results_d.json", "pretrained=m", {"falsedemo_trec_permuted": 0.4})
    payload = json.loads(theirs.read_text())
    payload["chat_template_sha"] = "def456"  # lm-eval's own field, when a file lacks ours
    theirs.write_text(json.dumps(payload))
    board, _ = leaderboard.build([raw, chat, old, theirs], tmp_path / "out", bootstrap_iters=0)
    assert sorted(row.config_text for row in board.ordered_rows()) == [
        "(default)", "chat_template_sha256=abc123,prompt_mode=chat_multiturn", "chat_template_sha256=def456"]
    default = next(row for row in board.ordered_rows() if not row.args)
    assert leaderboard.summarise(default, iterations=0)["gap_permuted"] == pytest.approx(0.1)  # raw + old file


def test_k_4_and_k_0_of_one_model_and_task_are_two_rows_never_a_duplicate(tmp_path, capsys):
    """The reported case: the same model and task at k = 4 and k = 0 gave ONE row "k = 0, 4" whose permuted value
    was the k = 0 run alone (the k = 4 file dropped as a duplicate, exit 0)."""
    four = lm_eval_file(tmp_path, "results_k4.json", "pretrained=m", {"falsedemo_trec_correct": 0.7,
                                                                      "falsedemo_trec_permuted": 0.4}, k=4)
    zero = lm_eval_file(tmp_path, "results_k0.json", "pretrained=m", {"falsedemo_trec_correct": 0.6,
                                                                      "falsedemo_trec_permuted": 0.55}, k=0)
    assert run_cli("--results", four, zero, "--output", tmp_path / "out") == 0
    board, paths = leaderboard.build([four, zero], tmp_path / "again", bootstrap_iters=0)
    assert not [message for message in board.warnings if message.startswith("duplicate")]
    by_k = {leaderboard.summarise(row, iterations=0)["k"]: leaderboard.summarise(row, iterations=0)
            for row in board.ordered_rows()}
    assert set(by_k) == {"4", "0"}
    assert by_k["4"]["permuted_acc"] == pytest.approx(0.4) and by_k["4"]["gap_permuted"] == pytest.approx(0.3)
    assert by_k["0"]["permuted_acc"] == pytest.approx(0.55) and by_k["0"]["gap_permuted"] == pytest.approx(0.05)
    markdown = paths["markdown"].read_text()
    assert "2 different protocols" in markdown and "ranked only within a group" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| m [")]
    assert len(rows) == 2 and sorted(row.split("{")[1][:3] for row in rows) == ["k=0", "k=4"]  # each marked
    page = paths["html"].read_text()
    assert page.count('<span class="protocol">') == 2 and "2 different protocols" in page
    assert len(list((tmp_path / "again" / "eval_results").iterdir())) == 2  # one export folder per row


@pytest.mark.parametrize("change, protocol_text", [
    ({"limit": 50}, "N=50"),
    ({"metadata": {"data_source": "hub:CogComp/trec"}}, "data hub"),
    ({"model": "hf"}, "whole label"),
])
def test_runs_under_another_protocol_are_separate_rows(tmp_path, change, protocol_text):
    """N, data source and label scoring split rows like k; dtype, prompt mode and lens already split them
    (model args and rowkey.READOUT_FIELDS)."""
    base = lm_eval_file(tmp_path, "results_a.json", "pretrained=m", {"falsedemo_trec_correct": 0.6,
                                                                     "falsedemo_trec_permuted": 0.4})
    other = lm_eval_file(tmp_path, "results_b.json", "pretrained=m", {"falsedemo_trec_permuted": 0.5}, **change)
    board, _ = leaderboard.build([base, other], tmp_path / "out", bootstrap_iters=0)
    summaries = [leaderboard.summarise(row, iterations=0) for row in board.ordered_rows()]
    assert len(summaries) == 2 and not [m for m in board.warnings if m.startswith("duplicate")]
    (changed,) = [summary for summary in summaries if protocol_text in summary["protocol"]]
    assert changed["permuted_acc"] == pytest.approx(0.5) and changed["gap_permuted"] is None


def test_sst2_formats_on_fewer_queries_join_the_row_of_the_other_datasets(tmp_path):
    """The published protocol runs SST-2's formats on fewer queries (in a file of their own): one row, its protocol
    naming both limits; a second candidate row (another N) keeps them apart, said in one warning."""
    others = lm_eval_file(tmp_path, "results_a.json", "pretrained=m", {"falsedemo_trec_correct": 0.6,
                                                                       "falsedemo_trec_permuted": 0.4}, limit=24)
    sst2 = lm_eval_file(tmp_path, "results_b.json", "pretrained=m", {"falsedemo_sst2_f3_correct": 0.7,
                                                                     "falsedemo_sst2_f3_permuted": 0.6}, limit=8)
    board, _ = leaderboard.build([others, sst2], tmp_path / "out", bootstrap_iters=0)
    (row,) = board.ordered_rows()
    summary = leaderboard.summarise(row, iterations=0)
    assert summary["protocol"] == "k=4, N=24 (SST-2: 8 a format), data ?, first label token"
    assert summary["gap_permuted"] == pytest.approx((0.2 + 0.1) / 2) and not board.warnings
    fifty = lm_eval_file(tmp_path, "results_c.json", "pretrained=m", {"falsedemo_rte_correct": 0.6}, limit=50)
    board, _ = leaderboard.build([others, sst2, fifty], tmp_path / "out2", bootstrap_iters=0)
    assert len(board.ordered_rows()) == 3 and len(board.warnings) == 1 and "could belong to 2 rows" in board.warnings[0]


def test_other_dtype_lens_or_prompt_mode_are_other_rows(tmp_path):
    files = [lm_eval_file(tmp_path, "results_a.json", "pretrained=m,dtype=float32", {"falsedemo_trec_permuted": 0.4}),
             lm_eval_file(tmp_path, "results_b.json", "pretrained=m,dtype=bfloat16", {"falsedemo_trec_permuted": 0.5}),
             lm_eval_file(tmp_path, "results_c.json", "pretrained=m,dtype=float32,lens=tuned:/x",
                          {"falsedemo_trec_permuted": 0.6})]
    board, _ = leaderboard.build(files, tmp_path / "out", bootstrap_iters=0)
    assert len(board.ordered_rows()) == 3 and not board.warnings


def test_a_heads_file_joins_every_protocol_of_its_model(tmp_path):
    for folder in ("sweeps", "heads"):
        shutil.copytree(FIXTURES / folder, tmp_path / folder)
    lm_eval_file(tmp_path, "results_k4.json", "pretrained=gemma-3-270m,dtype=float32",
                 {"falsedemo_trec_correct": 0.7, "falsedemo_trec_permuted": 0.4}, k=4)
    board, paths = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=0)
    rows = csv_rows(paths["csv"])
    summaries = [leaderboard.summarise(row, iterations=0) for row in board.ordered_rows()]
    assert sorted(summary["k"] for summary in summaries) == ["4", "40"]
    assert all(summary["false_heads"] == "14:2;16:1" for summary in summaries)
    assert rows[("gemma-3-270m", "dtype=float32")]["false_heads"] == "14:2;16:1"


def test_lm_eval_groups_and_the_sst2_formats_task_feed_the_row(tmp_path):
    """Plain lm-eval results of `--tasks falsedemo_main_correct,falsedemo_main_permuted`: SST-2 is its all-formats
    task; the group rows are read without warnings."""
    from lm_eval_false_demos.core.datasets import MAIN_DATASETS

    correct = {f"falsedemo_{d}_correct": 0.7 for d in MAIN_DATASETS if d != "sst2"}
    permuted = {f"falsedemo_{d}_permuted": 0.5 for d in MAIN_DATASETS if d != "sst2"}
    correct["falsedemo_sst2_formats_correct"], permuted["falsedemo_sst2_formats_permuted"] = 0.84, 0.28
    groups = {"falsedemo_main_correct": {"calibrated_acc,none": (0.7 * 13 + 0.84) / 14},
              "falsedemo_main_permuted": {"calibrated_acc,none": (0.5 * 13 + 0.28) / 14}}
    lm_eval_file(tmp_path, "results_x.json", "pretrained=m", {**correct, **permuted}, groups=groups)
    board, _ = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=0)
    summary = leaderboard.summarise(board.ordered_rows()[0])
    assert summary["correct_acc"] == pytest.approx(groups["falsedemo_main_correct"]["calibrated_acc,none"])
    assert summary["gap_permuted"] == pytest.approx((0.2 * 13 + 0.56) / 14)
    assert summary["correct_datasets"] == 14 and summary["per_dataset"]["sst2"]["permuted"] == 0.28
    assert not board.warnings


def test_a_row_with_only_unnatural_shows_what_ran(tmp_path):
    lm_eval_file(tmp_path, "results_u.json", "pretrained=quick",
                 {"falsedemo_unnatural_correct": 0.978, "falsedemo_unnatural_permuted": 0.4})
    _, paths = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=0)
    (row,) = parse_page_rows(paths["html"])
    assert row["ran"] == "no main dataset; ran unnatural: correct 0.978, permuted 0.400"
    assert "ran unnatural: correct 0.978, permuted 0.400" in paths["markdown"].read_text()


# ------------------------------------------------------------------ intervals from per-query scores


def write_sweep(folder, tasks, model="m", layers=3):
    """A sweep folder as `falsedemo sweep` writes it: sweep.json plus query_scores.npz.
    ``tasks``: {task name: (dataset, setting, scores [N, layers+1, K], gold [N])}."""
    import numpy as np

    from lm_eval_false_demos.results import query_scores
    from lm_eval_false_demos.core.metrics import calibrated_accuracy_by_layer

    folder.mkdir(parents=True)
    entries, arrays = {}, {}
    for name, (dataset, setting, scores, gold, *follow) in tasks.items():
        entries[name] = {"dataset": dataset, "setting": setting, "n": len(gold), "k": 0 if setting == "zeroshot" else 4,
                         "chance": 1 / scores.shape[2],
                         "per_layer": {"calibrated_acc": calibrated_accuracy_by_layer(scores, gold).tolist()}}
        arrays[name] = {"query_keys": [f"q{i}" for i in range(len(gold))], "query_scores": scores,
                        "gold": np.asarray(gold), "follow": np.asarray(follow[0]) if follow else None}
    config = {"model": "hf", "model_args": {"pretrained": model}, "num_layers": layers, "k": [4],
              "seed": {"fewshot": 1234}, "command": f"falsedemo sweep --model_args pretrained={model}"}
    (folder / "sweep.json").write_text(json.dumps({"kind": "falsedemo.sweep", "format_version": 1, "config": config,
                                                   "tasks": entries}))
    query_scores.write(folder, arrays)


def random_scores(rng, n, layers, k, signal):
    import numpy as np

    from lm_eval_false_demos.core.metrics import normalise

    gold = rng.integers(0, k, n)
    logits = rng.standard_normal((n, layers + 1, k))
    logits[np.arange(n), :, gold] += signal
    return normalise(logits), gold


def test_interval_of_the_mean_gap_is_a_paired_bootstrap_over_each_datasets_queries(tmp_path):
    import numpy as np

    from lm_eval_false_demos.core.datasets import MAIN_DATASETS
    from lm_eval_false_demos.core.metrics import calibrated_accuracy

    rng = np.random.default_rng(3)
    tasks, truth = {}, {}
    for dataset in MAIN_DATASETS:
        keys = ["sst2", "sst2_f10"] if dataset == "sst2" else [dataset]
        correct, gold = random_scores(rng, 12, 3, 2, 2.0)
        for key in keys:
            permuted = correct.copy()
            permuted[:, 2:] = random_scores(rng, 12, 1, 2, 0.0)[0][:, :1].repeat(2, axis=1)  # last layers lose
            tasks[f"falsedemo_{key}_correct"] = (key, "correct", correct, gold)
            tasks[f"falsedemo_{key}_permuted"] = (key, "permuted", permuted, gold)
            truth.setdefault(dataset, []).append((correct, permuted, gold))
    write_sweep(tmp_path / "chunk_a", {n: t for n, t in tasks.items() if "_s" in n or "_a" in n})
    write_sweep(tmp_path / "chunk_b", {n: t for n, t in tasks.items() if not ("_s" in n or "_a" in n)})
    board, _ = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=200)
    (row,) = board.ordered_rows()
    summary = leaderboard.summarise(row, iterations=200, seed=0)
    assert summary["interval_datasets"] == 14 and summary["sst2_formats"] == "2"
    # the oracle: the same resamples, one dataset at a time, with the scalar metric
    draws = np.random.default_rng(0)
    gaps = []
    for _ in range(200):
        per_dataset = []
        for dataset in MAIN_DATASETS:
            index = draws.integers(0, 12, 12)
            per_dataset.append(np.mean([calibrated_accuracy(c[index, -1], g[index])
                                        - calibrated_accuracy(w[index, -1], g[index]) for c, w, g in truth[dataset]]))
        gaps.append(np.mean(per_dataset))
    low, high = np.percentile(gaps, [2.5, 97.5])
    assert (summary["gap_permuted_low"], summary["gap_permuted_high"]) == (pytest.approx(low), pytest.approx(high))
    assert summary["gap_permuted_low"] <= summary["gap_permuted"] <= summary["gap_permuted_high"]
    sst2 = np.mean([calibrated_accuracy(c[:, -1], g) - calibrated_accuracy(w[:, -1], g) for c, w, g in truth["sst2"]])
    assert summary["per_dataset"]["sst2"]["correct"] - summary["per_dataset"]["sst2"]["permuted"] == pytest.approx(sst2)
    assert len(summary["bands"]["correct"]) == 4  # a band per layer 0..3


def test_no_interval_is_claimed_without_scores_for_every_dataset(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    correct, gold = random_scores(rng, 10, 3, 3, 1.0)
    write_sweep(tmp_path / "s", {"falsedemo_trec_correct": ("trec", "correct", correct, gold),
                                 "falsedemo_trec_permuted": ("trec", "permuted", correct, gold)})
    lm_eval_file(tmp_path, "results_r.json", {"pretrained": "m"},
                 {"falsedemo_rte_correct": 0.7, "falsedemo_rte_permuted": 0.5})
    board, paths = leaderboard.build([tmp_path], tmp_path / "out")
    summary = leaderboard.summarise(board.ordered_rows()[0])
    assert summary["gap_permuted"] == pytest.approx(0.1)  # (0 + 0.2) / 2
    assert summary["gap_permuted_low"] is None and summary["interval_datasets"] == 0
    assert csv_rows(paths["csv"])[("m", "(default)")]["gap_permuted_low"] == ""


def test_prediction_metrics_are_means_over_datasets_of_the_final_layer_metrics(tmp_path):
    import numpy as np

    from lm_eval_false_demos.core import metrics

    rng = np.random.default_rng(5)
    tasks, oracle = {}, {"flip_rate": [], "prior_alignment": [], "semantic_override": [], "follow_rate": []}
    layer_oracle = {"prior_alignment": [], "follow_rate": []}
    for dataset in ("trec", "rte", "mrpc"):
        correct, gold = random_scores(rng, 16, 3, 3, 2.0)
        permuted, _ = random_scores(rng, 16, 3, 3, 0.5)
        zeroshot, _ = random_scores(rng, 16, 3, 3, 1.0)
        follow = (gold + 1) % 3
        tasks[f"falsedemo_{dataset}_correct"] = (dataset, "correct", correct, gold)
        tasks[f"falsedemo_{dataset}_permuted"] = (dataset, "permuted", permuted, gold, follow)
        tasks[f"falsedemo_{dataset}_zeroshot"] = (dataset, "zeroshot", zeroshot, gold)
        prior = metrics.predictions(zeroshot[:, -1])
        oracle["flip_rate"].append(metrics.flip_rate(correct[:, -1], permuted[:, -1], gold))
        oracle["prior_alignment"].append(metrics.prior_alignment(permuted[:, -1], prior))
        oracle["semantic_override"].append(metrics.semantic_override_rate(permuted[:, -1], follow, prior))
        oracle["follow_rate"].append(metrics.follow_accuracy(permuted[:, -1], follow))
        layer_oracle["prior_alignment"].append([metrics.prior_alignment(permuted[:, layer], prior) for layer in range(4)])
        layer_oracle["follow_rate"].append([metrics.follow_accuracy(permuted[:, layer], follow) for layer in range(4)])
    write_sweep(tmp_path / "s", tasks)
    board, paths = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=100)
    (row,) = board.ordered_rows()
    summary = leaderboard.summarise(row, iterations=100)
    for name, values in oracle.items():
        assert summary[name] == pytest.approx(np.mean(values)), name
    assert summary["k"] == "4"  # the zero-shot tasks' k = 0 is not the row's k
    assert summary["prior_alignment_low"] <= summary["prior_alignment"] <= summary["prior_alignment_high"]
    assert summary["flip_rate_low"] <= summary["flip_rate"] <= summary["flip_rate_high"]
    assert summary["label_sensitivity"] is None and "wrong-share grid" in summary["prediction_notes"]
    # Over layers (the page's second view of the critical layer): the mean over datasets of each layer's metric
    # against the zero-shot answer at the final layer, the headline at the last layer, an interval at every layer.
    for name, per_dataset in layer_oracle.items():
        assert summary["prediction_curves"][name] == pytest.approx(np.mean(per_dataset, axis=0)), name
        assert summary["prediction_curves"][name][-1] == pytest.approx(summary[name])
        assert summary["prediction_bands"][name][-1] == [summary[f"{name}_low"], summary[f"{name}_high"]]
        assert all(low <= value <= high for value, (low, high) in
                   zip(summary["prediction_curves"][name], summary["prediction_bands"][name]))
    page = paths["html"].read_text()
    assert page.count('<figure class="prediction-curves">') == 1 and page.count('data-setting="follow_rate"') == 2
    row_csv = csv_rows(paths["csv"])[("m", "(default)")]
    assert float(row_csv["semantic_override"]) == pytest.approx(np.mean(oracle["semantic_override"]), abs=1e-6)
    assert row_csv["label_sensitivity"] == ""  # absent, not 0
    header = next(line for line in paths["markdown"].read_text().splitlines() if line.startswith("|"))
    cells = [cell.strip() for cell in header.strip("|").split("|")]
    assert "prior alignment" in cells and "flip rate" in cells and "semantic override" not in cells
    # the markdown stays narrow: two columns more than before issue 23
    assert len(leaderboard.MARKDOWN_COLUMNS) == 14


def test_without_a_zeroshot_run_prior_alignment_is_absent_with_a_note(tmp_path):
    import numpy as np

    rng = np.random.default_rng(6)
    correct, gold = random_scores(rng, 10, 3, 2, 1.0)
    write_sweep(tmp_path / "s", {"falsedemo_trec_correct": ("trec", "correct", correct, gold),
                                 "falsedemo_trec_permuted": ("trec", "permuted", correct[::-1].copy(), gold)})
    board, _ = leaderboard.build([tmp_path], tmp_path / "out", bootstrap_iters=0)
    summary = leaderboard.summarise(board.ordered_rows()[0], iterations=0)
    assert summary["prior_alignment"] is None and summary["flip_rate"] is not None
    assert "prior_alignment: needs the permuted and zeroshot settings" in summary["prediction_notes"]


# ----------------------------------------------------------------------------------- hub export


# The published format (huggingface/hub-docs eval_results.yaml and docs/hub/eval-results.md), as a checker.
EVAL_RESULTS_FIELDS = {"dataset", "value", "verifyToken", "date", "source", "evaluation_framework", "notes"}


def check_eval_results_entry(entry):
    assert set(entry) <= EVAL_RESULTS_FIELDS and {"dataset", "value"} <= set(entry)
    assert set(entry["dataset"]) <= {"id", "task_id", "config", "split", "revision"}
    assert isinstance(entry["dataset"]["id"], str) and re.fullmatch(r"[\w.-]+/[\w.-]+", entry["dataset"]["id"])
    assert isinstance(entry["dataset"]["task_id"], str) and entry["dataset"]["task_id"]
    assert isinstance(entry["value"], (int, float))
    if "source" in entry:
        assert "url" in entry["source"]
    if "date" in entry:
        from datetime import date

        date.fromisoformat(entry["date"])
    assert isinstance(entry.get("notes", ""), str)


def test_export_is_the_hubs_eval_results_format(built):
    import yaml
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml, parse_eval_result_entries

    _, paths = built
    files = sorted(paths["eval_results"].glob("*/.eval_results/falsedemo.yaml"))
    assert len(files) == 4
    base = next(path for path in files if path.parent.parent.name.startswith("gemma-3-270m_dtype_float32-"))
    entries = yaml.safe_load(base.read_text(encoding="utf-8"))
    for entry in entries:
        check_eval_results_entry(entry)
    # huggingface_hub's own reader and writer give back exactly our entries
    parsed = parse_eval_result_entries(entries)
    assert all(isinstance(entry, EvalResultEntry) for entry in parsed)
    assert eval_result_entries_to_yaml(parsed) == entries
    by_task = {entry["dataset"]["task_id"]: entry for entry in entries}
    assert sorted(by_task) == ["falsedemo_main_correct", "falsedemo_main_half", "falsedemo_main_half_gap",
                               "falsedemo_main_permuted", "falsedemo_main_permuted_gap", "falsedemo_main_random",
                               "falsedemo_main_random_gap"]
    assert by_task["falsedemo_main_permuted_gap"]["value"] == 0.1925
    notes = by_task["falsedemo_main_permuted"]["notes"]
    for needle in ("k=40", "N=200", "few-shot seed 1234", "readout: final layer", "label scoring: first label token",
                   "sweep.json", "results_2025-01-01"):
        assert needle in notes, needle
    script = (base.parent.parent / "reproduce.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash") and "lm_eval --model hf-earlyexit" in script
