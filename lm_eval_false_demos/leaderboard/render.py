"""Markdown, CSV and the static page (inline SVG, no network) from the row summaries.

Every text from a results file is escaped where it lands: ``html.escape`` in the page and the markdown,
formula-looking CSV cells quoted, the page's embedded JSON free of ``<``, ``>`` and ``&``.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from lm_eval_false_demos.core.datasets import MAIN_DATASETS
from lm_eval_false_demos.leaderboard.columns import (
    COLUMNS,
    CSV_KEYS,
    DEFAULT_COLUMNS,
    MARKDOWN_COLUMNS,
    Column,
    cell_text,
)

TITLE = "Overthinking leaderboard"
PAGE_TEMPLATE = Path(__file__).with_name("page.html")
SETTING_COLOURS = {"correct": "#1b7837", "permuted": "#c51b7d", "random": "#e08214", "half": "#2166ac"}
PREDICTION_COLOURS = {"prior_alignment": "#542788", "follow_rate": "#b35806"}
DETAIL_COLUMNS = tuple(column for column in COLUMNS if column not in DEFAULT_COLUMNS)
_COLUMN_BY_KEY = {column.key: column for column in COLUMNS}


def protocols(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The measurement protocols present, most rows first (a heads-only row has none)."""
    found = [summary.get("protocol") for summary in summaries if summary.get("protocol")]
    return sorted(set(found), key=lambda text: (-found.count(text), text))


def by_gap(summaries: Sequence[Mapping[str, Any]]) -> list[int]:
    """Row order of the published tables: grouped by protocol (rows under different protocols are never ranked
    against each other), within a group the largest permuted gap first, rows without one last."""
    order = {text: index for index, text in enumerate(protocols(summaries))}
    return sorted(range(len(summaries)), key=lambda i: (order.get(summaries[i].get("protocol"), len(order)),
                                                        summaries[i].get("gap_permuted") is None,
                                                        -(summaries[i].get("gap_permuted") or 0.0)))


def protocol_notice(summaries: Sequence[Mapping[str, Any]]) -> str:
    """One line when the rows come from more than one protocol: they are not comparable across groups."""
    found = protocols(summaries)
    if len(found) < 2:
        return ""
    return (f"These rows come from {len(found)} different protocols ({'; '.join(found)}): each row names its "
            "protocol, rows are grouped by it and ranked only within a group; numbers of different groups are "
            "not comparable.")


# --------------------------------------------------------------------------------------- markdown


def render_markdown(summaries: Sequence[Mapping[str, Any]], protocol_note: str = "") -> str:
    columns = MARKDOWN_COLUMNS
    matrix = []
    notice = protocol_notice(summaries)
    for index in by_gap(summaries):
        summary = summaries[index]
        cells = [_markdown_cell(cell_text(column, summary)) for column in columns]
        cells[0] += " " + _markdown_cell(f"[{summary.get('config')}]")  # the row key: model + config + protocol
        if notice:
            cells[0] += " " + _markdown_cell(f"{{{summary.get('protocol') or 'heads only'}}}")
        if summary.get("ran"):
            cells[0] += " " + _markdown_cell(f"(no main dataset; ran {summary['ran']})")
        matrix.append(cells)
    headers = [column.header for column in columns]
    try:
        from pytablewriter import MarkdownTableWriter
        from typepy import String
    except ImportError:  # lm-eval depends on pytablewriter; plain markdown keeps the command working without it
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in matrix]
        table = "\n".join(lines) + "\n"
    else:
        writer = MarkdownTableWriter(headers=headers, value_matrix=matrix or [[""] * len(headers)], margin=1)
        writer.type_hints = [String] * len(headers)  # cells are preformatted text
        table = writer.dumps()
    legend = "\n".join(f"- **{html.escape(c.header)}**: {html.escape(c.description)}" for c in columns)
    return (
        f"# {TITLE}\n\n"
        f"Calibrated accuracy at the final layer, mean over the {len(MAIN_DATASETS)} main datasets, with 95% "
        "paired-bootstrap intervals over queries in brackets; sorted by the gap. "
        + (protocol_note + " " if protocol_note else "")
        + (f"**{notice}** " if notice else "")
        + "Every other column (random and half-correct settings, per-dataset values, versions, the reproduction "
        "commands) is in leaderboard.csv and on the page.\n\n" + table + "\n" + legend + "\n"
    )


def _markdown_cell(text: str) -> str:
    # html.escape keeps a hostile "<script>" visible as text on renderers that allow inline HTML.
    return html.escape(" ".join(text.split()), quote=False)


# -------------------------------------------------------------------------------------------- CSV


def csv_rows(summaries: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    rows = []
    for index in by_gap(summaries):
        summary = summaries[index]
        rows.append([_csv_cell(_COLUMN_BY_KEY.get(key.removesuffix("_low").removesuffix("_high")), summary.get(key))
                     for key in CSV_KEYS])
    return list(CSV_KEYS), rows


def _csv_cell(column: Column | None, value: Any) -> Any:
    if value is None:
        return ""
    if column is not None and column.kind in ("acc", "signed"):
        return repr(round(float(value), 6))
    if column is not None and column.kind == "int":
        return str(int(value)) if isinstance(value, (int, float)) else str(value)
    text = str(value)
    # A cell starting with = + - @ is run as a formula by spreadsheets: quote it as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# ------------------------------------------------------------------------------------------- page


def embed_json(payload: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, ``<!--`` or entities."""
    text = json.dumps(payload, ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(summaries: Sequence[Mapping[str, Any]], warnings: Sequence[str], protocol_note: str = "") -> str:
    order = by_gap(summaries)
    notice = protocol_notice(summaries)
    head = "".join(
        f'<th scope="col" data-key="{html.escape(c.key)}" data-kind="{c.kind}" title="{html.escape(c.description)}">'
        f'<button type="button">{html.escape(c.header)}</button></th>'
        for c in DEFAULT_COLUMNS
    )
    body, details = [], []
    for index in order:
        summary = summaries[index]
        cells = []
        for column in DEFAULT_COLUMNS:
            text = html.escape(cell_text(column, summary))
            if column.key == "model":
                config = html.escape(summary.get("config") or "")
                text = (f'<a class="detail-link" href="#detail-{index}">{text}</a>'
                        f'<span class="config">{config}</span>')
                if notice:
                    text += f'<span class="protocol">{html.escape(summary.get("protocol") or "heads only")}</span>'

                if summary.get("ran"):
                    text += f'<span class="ran">no main dataset; ran {html.escape(summary["ran"])}</span>'
            cells.append(f'<td data-key="{column.key}">{text}</td>')
        body.append(f'<tr data-row="{index}">' + "".join(cells) + "</tr>")
        details.append(_detail(index, summary))
    data = [{key: _json_value(summary.get(key)) for key in CSV_KEYS} for summary in summaries]
    warning_items = "".join(f"<li>{html.escape(message)}</li>" for message in warnings)
    legend = "".join(f"<dt>{html.escape(c.header)}</dt><dd>{html.escape(c.description)}</dd>" for c in COLUMNS)
    replacements = {
        "{{TITLE}}": TITLE,
        "{{MAIN_COUNT}}": str(len(MAIN_DATASETS)),
        "{{ROW_COUNT}}": str(len(summaries)),
        "{{PROTOCOL}}": html.escape(" ".join(part for part in (protocol_note, notice) if part)),
        "{{TABLE_HEAD}}": head,
        "{{TABLE_BODY}}": "\n".join(body),
        "{{DETAILS}}": "\n".join(details),
        "{{LEGEND}}": legend,
        "{{WARNINGS}}": f"<details><summary>{len(warnings)} input warnings</summary><ul>{warning_items}</ul></details>"
        if warnings else "",
        "{{DATA}}": embed_json(data),
    }
    page = PAGE_TEMPLATE.read_text(encoding="utf-8")
    for marker, value in replacements.items():
        page = page.replace(marker, value)
    return page


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _detail(index: int, summary: Mapping[str, Any]) -> str:
    title = html.escape(f"{summary['model']} [{summary.get('config') or ''}]")
    items = "".join(
        f"<dt>{html.escape(c.header)}</dt><dd>{html.escape(cell_text(c, summary))}</dd>"
        for c in DETAIL_COLUMNS if cell_text(c, summary)
    )
    figures = []
    per_dataset = summary.get("per_dataset") or {}
    if any(value is not None for values in per_dataset.values() for value in values.values()):
        figures.append(f'<figure class="bars">{render_bars_svg(per_dataset, summary["model"])}'
                       "<figcaption>Final-layer calibrated accuracy per dataset</figcaption></figure>")
    curves = summary.get("curves") or {}
    if curves:
        figures.append(
            '<figure class="curves">' + render_curves_svg(
                curves, bands=summary.get("bands") or {}, critical=summary.get("critical_layer"),
                early_exit=summary.get("early_exit_layer"), label=f"Mean calibrated accuracy by layer, {summary['model']}",
            ) + "<figcaption>Mean over the main datasets by layer; shaded: 95% bootstrap band</figcaption></figure>"
        )
    predicted = summary.get("prediction_curves") or {}
    if predicted:
        figures.append(
            '<figure class="prediction-curves">' + render_curves_svg(
                predicted, bands=summary.get("prediction_bands") or {}, critical=summary.get("critical_layer"),
                label=f"Prior alignment and follow rate by layer, permuted demonstrations, {summary['model']}",
                colours=PREDICTION_COLOURS, names={name: _COLUMN_BY_KEY[name].header for name in PREDICTION_COLOURS},
            ) + "<figcaption>Permuted demonstrations: share of queries answered as the model answers with no "
                "demonstrations (prior alignment) and as the shown labels map them (follow rate), by layer; "
                "shaded: 95% bootstrap band</figcaption></figure>"
        )
    return (f'<details class="detail" id="detail-{index}"><summary>{title}</summary>'
            f'<div class="detail-body"><dl>{items}</dl><div class="figures">{"".join(figures)}</div></div></details>')


def render_bars_svg(per_dataset: Mapping[str, Mapping[str, float | None]], model: str, width: int = 420) -> str:
    """Horizontal bars: correct and permuted accuracy for each main dataset (0 to 1)."""
    left, right, bar, gap = 150, 40, 7, 6
    settings = [s for s in ("correct", "permuted") if any(v.get(s) is not None for v in per_dataset.values())]
    rows = list(per_dataset)
    height = 20 + len(rows) * (bar * len(settings) + gap)
    plot_w = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{html.escape(f"Per-dataset accuracy, {model}")}">']
    for tick in (0, 0.5, 1):
        x = left + plot_w * tick
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="12" y2="{height}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="10" text-anchor="middle">{tick:g}</text>')
    y = 16
    for dataset in rows:
        parts.append(f'<text x="{left - 4}" y="{y + bar * len(settings) / 2 + 4:.1f}" text-anchor="end">'
                     f"{html.escape(dataset)}</text>")
        for setting in settings:
            value = per_dataset[dataset].get(setting)
            if value is not None:
                parts.append(
                    f'<rect class="bar" data-setting="{setting}" x="{left}" y="{y}" width="{plot_w * value:.1f}" '
                    f'height="{bar - 1}" fill="{SETTING_COLOURS[setting]}"><title>{html.escape(dataset)} {setting} '
                    f"{value:.3f}</title></rect>"
                )
            y += bar
        y += gap
    parts.append("</svg>")
    return "".join(parts)


def render_curves_svg(
    curves: Mapping[str, list[float]], bands: Mapping[str, list] | None = None, critical: Any = None,
    early_exit: Any = None, chance: float | None = None, label: str = "", width: int = 420, height: int = 260,
    colours: Mapping[str, str] = SETTING_COLOURS, names: Mapping[str, str] | None = None,
) -> str:
    """A small line plot (one line per series of ``colours`` present in ``curves``, in that order, by default the
    settings' mean accuracy by layer; optional bands; gaps where a value is None) as inline SVG text."""
    bands = {("permuted" if name == "corrupted" else name): value for name, value in (bands or {}).items()}
    names = names or {}
    left, right, top, bottom = 44, 100, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    layers = max(len(c) for c in curves.values()) - 1 if curves else 1
    values = [v for c in curves.values() for v in c if v is not None] + \
             [v for b in bands.values() for pair in b for v in pair if v is not None]
    values += [chance] if chance is not None else []
    low = math.floor(min(values, default=0.0) * 10) / 10
    high = math.ceil(max(values, default=1.0) * 10) / 10
    if high - low < 0.1:
        low, high = max(0.0, high - 0.1), max(high, 0.1)

    def x(layer: float) -> float:
        return left + plot_w * layer / max(layers, 1)

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - low) / (high - low))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(label)}">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#888"/>',
    ]
    for i in range(6):
        value = low + (high - low) * i / 5
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    for layer in range(0, layers + 1, max(1, math.ceil(layers / 8))):
        parts.append(f'<text x="{x(layer):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{layer}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">layer</text>')
    markers = [(name, value, dash) for name, value, dash in (("critical", critical, "4 3"), ("early exit", early_exit, "1 3"))
               if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= layers]
    for name, value, dash in markers:
        parts.append(f'<line class="marker" x1="{x(value):.1f}" x2="{x(value):.1f}" y1="{top}" y2="{top + plot_h}" '
                     f'stroke="#555" stroke-dasharray="{dash}"><title>{name} layer {value}</title></line>')
    if chance is not None:
        parts.append(f'<line class="chance" x1="{left}" x2="{left + plot_w}" y1="{y(chance):.1f}" y2="{y(chance):.1f}" '
                     f'stroke="#999" stroke-dasharray="6 3"><title>chance {chance:.3f}</title></line>')
    legend_y = top + 6
    for setting, colour in colours.items():
        curve = curves.get(setting)
        if not curve:
            continue
        shown = html.escape(names.get(setting, setting))
        band = bands.get(setting)
        if band and len(band) == len(curve):
            for run in _defined_runs([None if None in pair else pair for pair in band]):
                outline = [(x(i), y(band[i][1])) for i in run] + [(x(i), y(band[i][0])) for i in reversed(run)]
                parts.append(f'<polygon class="band" data-setting="{setting}" fill="{colour}" fill-opacity="0.18" '
                             f'stroke="none" points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in outline)}"/>')
        for run in _defined_runs(curve):
            points = " ".join(f"{x(layer):.1f},{y(curve[layer]):.1f}" for layer in run)
            parts.append(f'<polyline class="curve" data-setting="{setting}" fill="none" stroke="{colour}" '
                         f'stroke-width="2" points="{points}"><title>{shown}</title></polyline>')
        legend_y += 16
        parts.append(f'<line x1="{left + plot_w + 8}" x2="{left + plot_w + 24}" y1="{legend_y - 4}" '
                     f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{left + plot_w + 28}" y="{legend_y}">{shown}</text>')
    for name, _, dash in markers:  # the legend names the markers drawn
        legend_y += 16
        parts.append(f'<line x1="{left + plot_w + 8}" x2="{left + plot_w + 24}" y1="{legend_y - 4}" '
                     f'y2="{legend_y - 4}" stroke="#555" stroke-dasharray="{dash}"/>')
        parts.append(f'<text x="{left + plot_w + 28}" y="{legend_y}">{name}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _defined_runs(values: Sequence[Any]) -> list[list[int]]:
    """Indices of the maximal stretches of values that are not None (a curve is drawn in pieces over gaps)."""
    runs: list[list[int]] = []
    for index, value in enumerate(values):
        if value is None:
            continue
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs
