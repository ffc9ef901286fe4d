"""``falsedemo leaderboard``: tables, a static page and hub exports from folders of results files.

collect (files -> rows, keyed by rowkey) -> headline (means, layer statistics, bootstrap intervals) ->
columns (one summary per row) -> render (markdown, CSV, page) and export (.eval_results) -> command (CLI).
"""

from .collect import Leaderboard, Measurement, Row
from .columns import COLUMNS, DEFAULT_COLUMNS, MARKDOWN_COLUMNS, SETTINGS_SHOWN, summarise
from .command import OUTPUT_NAMES, add_arguments, build, run
from .render import embed_json, render_curves_svg
from .rowkey import READOUT_FIELDS, row_key
from ..task_yamls import parse_task_name
from .values import parse_model_args

__all__ = [
    "COLUMNS", "DEFAULT_COLUMNS", "Leaderboard", "MARKDOWN_COLUMNS", "Measurement", "OUTPUT_NAMES", "READOUT_FIELDS",
    "Row", "SETTINGS_SHOWN", "add_arguments", "build", "embed_json", "parse_model_args", "parse_task_name",
    "render_curves_svg", "row_key", "run", "summarise",
]
