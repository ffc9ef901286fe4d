"""``falsedemo leaderboard``: tables, a static page and hub exports from folders of results files.

collect (files -> rows: our sweep and heads files through results' schemas, lm-eval's through lm_eval_files;
keyed by rowkey) -> headline (means, layer statistics, bootstrap intervals) ->
columns (one summary per row) -> render (markdown, CSV, page) and export (.eval_results) -> command (CLI).
"""

from lm_eval_false_demos.core.task_names import parse_task_name
from lm_eval_false_demos.leaderboard.collect import Leaderboard
from lm_eval_false_demos.leaderboard.columns import (
    COLUMNS,
    DEFAULT_COLUMNS,
    MARKDOWN_COLUMNS,
    SETTINGS_SHOWN,
    summarise,
)
from lm_eval_false_demos.leaderboard.publish import OUTPUT_NAMES, build
from lm_eval_false_demos.leaderboard.render import embed_json, render_curves_svg
from lm_eval_false_demos.leaderboard.rowkey import READOUT_FIELDS, row_key
from lm_eval_false_demos.leaderboard.rows import Measurement, Row
from lm_eval_false_demos.results.schema import parse_model_args

__all__ = [
    "COLUMNS", "DEFAULT_COLUMNS", "Leaderboard", "MARKDOWN_COLUMNS", "Measurement", "OUTPUT_NAMES", "READOUT_FIELDS",
    "Row", "SETTINGS_SHOWN", "build", "embed_json", "parse_model_args", "parse_task_name",
    "render_curves_svg", "row_key", "summarise",
]
