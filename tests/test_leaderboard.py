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

from lm_eval_false_demos import cli, leaderboard

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
    "critical_layer": 8, "early_exit_layer": 12, "early_exit_gain": (0.58 + 0.53 + 0.56 - 0.41 - 0.44 - 0.50) / 3,
    "heads_gap_recovered": 0.39, "random_heads_gap_recovered": 0.04, "random_heads_gap_recovered_sd": 0.05,
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
    output = tmp_path_factory.mktemp("leaderboard")
    board, paths = leaderboard.build([FIXTURES], output)
    return board, paths


def rows_by_config(summaries):
    return {(s["model"], s["config"]): s for s in summaries}


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return {(row["model"], row["config"]): row for row in csv.DictReader(stream)}


def test_rows_are_one_per_configuration(built):
    board, _ = built
    keys = set(rows_by_config(board.table()))
    assert keys == {
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
    summary = rows_by_config(board.table())[config]
    from_csv = csv_rows(paths["csv"])[config]
    markdown = paths["markdown"].read_text(encoding="utf-8")
    md_line = next(line for line in markdown.splitlines()
                   if line.startswith(f"| {config[0]} ") and f"| {html.escape(config[1])} " in line)
    md_cells = [cell.strip() for cell in md_line.strip("|").split("|")]
    md_headers = [c.header for c in leaderboard.COLUMNS if c.key not in leaderboard.MARKDOWN_SKIP]
    page_rows = parse_page_rows(paths["html"])
    page_row = next(row for row in page_rows if (row["model"], row["config"]) == config)
    page_data = page_json(paths["html"])[page_rows.index(page_row)]
    columns = {c.key: c for c in leaderboard.COLUMNS}
    for key, value in expected.items():
        column = columns[key]
        assert summary[key] == pytest.approx(value, abs=1e-9), key
        assert float(from_csv[key]) == pytest.approx(value, abs=1e-6), key
        assert page_data[key] == pytest.approx(value, abs=1e-9), key
        # cells show 3 decimals: equal to the input up to rounding
        tolerance = 0.0005 + 1e-9 if column.kind in ("acc", "signed") else 0
        if key in page_row:
            assert float(page_row[key].split(" (")[0]) == pytest.approx(value, abs=tolerance), key
        if key not in leaderboard.MARKDOWN_SKIP:
            cell = md_cells[md_headers.index(column.header)]
            assert float(cell.split(" (")[0]) == pytest.approx(value, abs=tolerance), key
            if key.endswith("_acc") and key[:-4] in leaderboard.SETTINGS_SHOWN:
                assert cell.endswith(f"({summary[key[:-4] + '_datasets']}/14)")


def test_identity_versions_and_sources(built):
    board, paths = built
    base = csv_rows(paths["csv"])[("gemma-3-270m", "dtype=float32")]
    # the packaged GGUF's file hash, named by both the lm-eval wrapper info and the sweep's identity
    assert base["identity"] == "GGUF gemma-3-270m-Q4_K_M.gguf sha256:5f1c0e0d5b0a7c2b9e4f3a1d8c6b2e7f0a9d4c3b2a1f0e9d8c7b6a5f4e3d2c1b"
    assert (base["k"], base["n_per_dataset"], base["data_source"]) == ("40", "200", "local")
    assert (base["plugin_version"], base["lm_eval_version"], base["transformers_version"]) == ("0.1.0", "0.4.13", "4.57.1")
    assert base["date"] == "2025-01-04"  # the sweep is the newest of the row's four files
    assert base["files"] == "4"  # two lm-eval files, the sweep and the heads file
    assert base["false_heads"] == "14:2;16:1"
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
    assert not any("partial-model" in str(s) or "nan-model" in str(s) for s in rows_by_config(board.table()))


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
    assert page_json(paths["html"])[rows.index(hostile)]["model"] == HOSTILE_MODEL
    embedded = page.split('id="leaderboard-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    # spreadsheets would run a cell starting with "=": the CSV quotes it as text
    assert csv_rows(paths["csv"])[(HOSTILE_MODEL, HOSTILE_CONFIG)]["transformers_version"].startswith("'=HYPERLINK")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown


def test_page_is_self_contained(built):
    _, paths = built
    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "Content-Security-Policy" in page
    assert page.count("<figure") == 1  # only the base gemma row has a sweep
    figure = page.split("<figure", 1)[1]
    assert len(re.findall(r'<polyline class="curve"', figure)) == 3  # correct, permuted, half
    points = re.search(r'data-setting="correct"[^>]*points="([^"]+)"', figure).group(1).split()
    assert len(points) == 19
    assert figure.count('class="chance"') == 1


def test_messy_folder_never_crashes_and_outputs_are_replaced(tmp_path):
    messy = tmp_path / "messy"
    shutil.copytree(FIXTURES / "broken", messy)
    (messy / "sub").mkdir()
    (messy / "sub" / "results_x.json").write_text(json.dumps({"results": {"falsedemo_sst2_correct": 5}, "config": {}}))
    (messy / "dir.json").mkdir()  # a folder named like a file
    output = tmp_path / "out"
    assert cli.main(["leaderboard", "--results", str(messy), str(tmp_path / "missing"), "--output", str(output)]) == 0
    assert cli.main(["leaderboard", "--results", str(messy), "--output", str(output)]) == 0  # rebuild replaces
    with open(output / "leaderboard.csv", newline="") as stream:
        assert len(list(csv.reader(stream))) == 1  # header only: nothing usable
    assert cli.main(["leaderboard", "--results", str(messy), "--output", str(output), "--strict"]) == 1


def test_sweep_numbers_without_a_stated_summary_follow_the_paper():
    sweep = json.loads((FIXTURES / "sweeps" / "sweep_gemma-3-270m_2025-01-04T09-00-00.000000" / "sweep.json").read_text())
    curves = {(t["dataset"], t["setting"]): t["per_layer"]["calibrated_acc"] for t in sweep["tasks"].values()}
    computed = leaderboard.sweep_summary({"curves": curves, "summary": {}})
    assert computed["critical_layer"] == GEMMA_BASE["critical_layer"]
    assert computed["early_exit_layer"] == GEMMA_BASE["early_exit_layer"]
    assert computed["early_exit_gain"] == pytest.approx(GEMMA_BASE["early_exit_gain"])


def test_critical_layer_follows_the_paper():
    # gap reaches half of its final value (.2 -> .1) first at layer 2
    assert leaderboard.critical_layer([0.5, 0.55, 0.65, 0.7], [0.5, 0.5, 0.55, 0.5]) == 2
    assert leaderboard.critical_layer([0.5, 0.6], [0.5, 0.7]) is None  # no final gap, no critical layer


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
    """Cell texts of the page's table, as a browser's textContent would give them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.in_body = False
        self.rows, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append([])
        elif self.in_body and tag == "td":
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def parse_page_rows(path):
    parser = _TableParser()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    keys = [column.key for column in leaderboard.PAGE_COLUMNS]
    return [dict(zip(keys, cells)) for cells in parser.rows]


def page_json(path):
    page = Path(path).read_text(encoding="utf-8")
    return json.loads(page.split('id="leaderboard-data">', 1)[1].split("</script>", 1)[0])


def test_k_of_a_heads_experiment_does_not_join_the_accuracy_k(tmp_path):
    """The row's k describes its accuracy columns; heads --evaluate may use another k for its ablations."""
    import json
    import shutil

    for folder in ("sweeps", "heads"):
        shutil.copytree(FIXTURES / folder, tmp_path / folder)
    (heads_file,) = (tmp_path / "heads").rglob("heads.json")
    payload = json.loads(heads_file.read_text())
    payload["config"]["k"] = 16
    heads_file.write_text(json.dumps(payload))
    _, paths = leaderboard.build([tmp_path], tmp_path / "out")
    row = csv_rows(paths["csv"])[("gemma-3-270m", "dtype=float32")]
    assert row["k"] == "40" and row["false_heads"] == "14:2;16:1"
