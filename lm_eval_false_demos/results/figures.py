"""Figures of the overthinking analyses: accuracy against layer, the gap against the number of demos, and the
heads' scores by block (every matplotlib figure of the package is drawn here).

Plotting lives apart from the analyses so ``falsedemo heads`` and the report can reuse it. Every figure is
drawn with matplotlib's Agg backend (no display needed) and saved through :mod:`results_io`, as PNG and
SVG, atomically. The functions take plain lists and dicts (the ``sweep.json`` shapes), never model objects.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lm_eval_false_demos.core import files as results_io  # noqa: E402

FIGURE_FORMATS = ("png", "svg")

# One colour per setting, stable across figures so that readers can compare panels at a glance.
SETTING_STYLES = {
    "correct": dict(color="tab:blue", linestyle="-", marker="o"),
    "permuted": dict(color="tab:red", linestyle="-", marker="s"),
    "half": dict(color="tab:orange", linestyle="-", marker="^"),
    "random": dict(color="tab:purple", linestyle="-", marker="v"),
    "zeroshot": dict(color="tab:gray", linestyle="--", marker="x"),
}


def _style(setting: str) -> dict:
    return dict(SETTING_STYLES.get(setting, dict(color="black", linestyle=":", marker=".")), markersize=3)


def draw_layer_curves(
    axis,
    curves: Mapping[str, Sequence[float]],
    chance: float,
    critical_layer: int | None = None,
    early_exit_layer: int | None = None,
    title: str = "",
    ylabel: str = "calibrated accuracy",
    styles: Mapping[str, Mapping] | None = None,
) -> None:
    """Accuracy against layer (0..L) for each curve, the chance line 1/K and the critical layer. Curves are keyed
    by setting (styled by it) unless ``styles`` gives a curve's line style (several runs in one panel)."""
    for name, values in curves.items():
        style = dict(styles[name], markersize=3) if styles and name in styles else _style(name)
        axis.plot(range(len(values)), values, label=name, **style)
    axis.axhline(chance, color="black", linewidth=0.8, linestyle=":", label=f"chance 1/K = {chance:.2f}")
    if critical_layer is not None:
        axis.axvline(critical_layer, color="tab:green", linewidth=1.0, linestyle="--",
                     label=f"critical layer {critical_layer}")
    if early_exit_layer is not None:
        axis.axvline(early_exit_layer, color="tab:brown", linewidth=1.0, linestyle="-.",
                     label=f"early exit {early_exit_layer}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("layer (0 = embeddings)")
    axis.set_ylabel(ylabel)
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small", loc="best")


def draw_position_gaps(
    axis,
    gaps: Mapping[str, Sequence[float]],
    title: str = "",
    query_position: int | None = None,
) -> None:
    """Gap (correct minus corrupted, last layer) against the number of preceding demonstrations."""
    for setting, values in gaps.items():
        axis.plot(range(len(values)), values, label=f"correct - {setting}", **_style(setting))
    axis.axhline(0.0, color="black", linewidth=0.8)
    if query_position is not None:
        # The last point is read at the query, the others at demonstrations: mark the change of source.
        axis.axvline(query_position, color="gray", linewidth=0.8, linestyle=":", label="query readout")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("number of preceding demonstrations")
    axis.set_ylabel("calibrated accuracy gap")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small", loc="best")


def draw_prior_and_follow(axis, lines: Mapping[str, Mapping], chance: float | None = None,
                          critical_layer: int | None = None, title: str = "") -> None:
    """Prior alignment (agreement with the model's own zero-shot answer) and follow rate against layer, with
    bands: where the corrupted prompts stop agreeing with the prior and start following the shown labels is a
    second view of the critical layer. ``lines``: {legend label: {"value", optional "low", "high", "setting",
    "dashed"}} (the sweep.json MetricCurve shape)."""
    for label, line in lines.items():
        values = np.array([np.nan if v is None else v for v in line["value"]], dtype=float)
        style = _style(line.get("setting", ""))
        if line.get("dashed"):
            style.update(linestyle="--", marker="d")
        axis.plot(range(len(values)), values, label=label, **style)
        if line.get("low") is not None and line.get("high") is not None:
            low = np.array([np.nan if v is None else v for v in line["low"]], dtype=float)
            high = np.array([np.nan if v is None else v for v in line["high"]], dtype=float)
            axis.fill_between(range(len(values)), low, high, color=style["color"], alpha=0.15, linewidth=0)
    if chance is not None:
        axis.axhline(chance, color="black", linewidth=0.8, linestyle=":", label=f"chance 1/K = {chance:.2f}")
    if critical_layer is not None:
        axis.axvline(critical_layer, color="tab:green", linewidth=1.0, linestyle="--",
                     label=f"critical layer {critical_layer}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("layer (0 = embeddings)")
    axis.set_ylabel("share of queries (argmax)")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small", loc="best")


def prior_follow_figure(panels: Sequence[Mapping], suptitle: str = ""):
    """One panel per entry: keys ``lines``, optionally ``chance``, ``critical_layer``, ``title``."""
    figure, axes = _grid(len(panels))
    for axis, panel in zip(axes, panels):
        draw_prior_and_follow(axis, panel["lines"], panel.get("chance"), panel.get("critical_layer"),
                              panel.get("title", ""))
    if suptitle:
        figure.suptitle(suptitle)
    return figure


def _grid(count: int, panel_width: float = 4.8, panel_height: float = 3.6):
    columns = min(count, 2) if count > 1 else 1
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(panel_width * columns, panel_height * rows), squeeze=False)
    flat = [axis for row in axes for axis in row]
    for spare in flat[count:]:
        spare.set_visible(False)
    return figure, flat[:count]


def save_figure(figure, directory: str | Path, stem: str) -> list[Path]:
    """Save ``figure`` as ``stem.png`` and ``stem.svg`` under ``directory`` (never overwriting) and close it."""
    paths = []
    try:
        figure.tight_layout()
        for suffix in FIGURE_FORMATS:
            path = results_io.unique_path(Path(directory) / f"{stem}.{suffix}")
            paths.append(results_io.save_figure_atomic(figure, path, dpi=150))
    finally:
        plt.close(figure)
    return paths


def layer_figure(panels: Sequence[Mapping], suptitle: str = ""):
    """One panel per entry: keys ``curves``, ``chance`` and optionally ``critical_layer``, ``early_exit_layer``,
    ``title``, ``styles`` (curve name -> line style)."""
    figure, axes = _grid(len(panels))
    for axis, panel in zip(axes, panels):
        draw_layer_curves(
            axis,
            panel["curves"],
            panel["chance"],
            panel.get("critical_layer"),
            panel.get("early_exit_layer"),
            panel.get("title", ""),
            styles=panel.get("styles"),
        )
    if suptitle:
        figure.suptitle(suptitle)
    return figure


def position_figure(panels: Sequence[Mapping], suptitle: str = ""):
    """One panel per entry: keys ``gaps`` (setting -> values over 0..k) and optionally ``title``."""
    figure, axes = _grid(len(panels))
    for axis, panel in zip(axes, panels):
        draw_position_gaps(axis, panel["gaps"], panel.get("title", ""), panel.get("query_position"))
    if suptitle:
        figure.suptitle(suptitle)
    return figure


def save_png(figure, path: Path, dpi: int = 120, overwrite: bool = False) -> Path:
    """Save ``figure`` as one PNG at ``path`` (atomically) and close it."""
    try:
        figure.tight_layout()
        return results_io.save_figure_atomic(figure, path, overwrite=overwrite, dpi=dpi)
    finally:
        plt.close(figure)


def prefix_matching_figure(prefix_matching, title: str, critical_layer: int | None = None):
    """Sum of prefix-matching scores per block, the sweep's critical layer marked."""
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar(range(prefix_matching.shape[0]), prefix_matching.sum(1), color="tab:blue")
    axis.axhline(0, color="black", linewidth=0.8)
    if critical_layer is not None:
        # Lens layer c is the residual entering block c: heads of blocks >= c act after the critical layer.
        axis.axvline(critical_layer - 0.5, color="tab:red", linestyle="--", label=f"critical layer {critical_layer}")
        axis.legend()
    axis.set_xlabel("block (layer of the head)")
    axis.set_ylabel("sum of prefix-matching scores")
    axis.set_title(title, fontsize=9)
    return figure


def heads_heatmap_figure(prefix_matching, label_promoting, top, title: str):
    """Both head scores as block x head maps, the top-k heads outlined."""
    num_blocks, num_heads = prefix_matching.shape
    figure, axes = plt.subplots(1, 2, figsize=(2 + 1.2 * num_heads, 0.35 * num_blocks + 2))
    for axis, values, name, cmap in ((axes[0], prefix_matching, "prefix-matching", "viridis"),
                                     (axes[1], label_promoting, "label-promoting", "RdBu_r")):
        limit = float(np.nanmax(np.abs(values))) or 1.0
        image = axis.imshow(values, aspect="auto", cmap=cmap,
                            **({"vmin": -limit, "vmax": limit} if cmap == "RdBu_r" else {}))
        for block, head in top:
            axis.add_patch(Rectangle((head - 0.5, block - 0.5), 1, 1, fill=False,
                                    edgecolor="red", linewidth=1.5))
        axis.set_xlabel("head")
        axis.set_ylabel("block")
        axis.set_xticks(range(num_heads))
        axis.set_title(name, fontsize=9)
        figure.colorbar(image, ax=axis, shrink=0.8)
    figure.suptitle(title + " (red: top-k)", fontsize=9)
    return figure
