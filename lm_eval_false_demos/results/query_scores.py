"""Per-query label probabilities at every layer, saved beside a sweep so intervals can be pooled later.

Calibrated accuracy is a dataset-level statistic, so an interval for a mean over datasets (the
leaderboard's headline) has to resample queries and recompute every dataset's thresholds: the curves in
``sweep.json`` are not enough. A sweep writes ``query_scores.npz`` (float64, so thresholds and ties are
exactly those of the sweep): for task ``i`` of ``tasks``, ``scores_i`` [N, L+1, K] (softmax over the K
labels at the query position), ``gold_i`` [N], ``keys_i`` [N] (query ids that pair settings) and, for the
settings whose demonstrations carry a shifted label, ``follow_i`` [N] (the class a copying model answers;
files written before it was added lack it).
"""

from __future__ import annotations

import zipfile

import io
from pathlib import Path
from typing import Mapping

import numpy as np

from lm_eval_false_demos.core.files import write_bytes_atomic

FILE_NAME = "query_scores.npz"


def write(run_directory: Path, arrays: Mapping[str, Mapping]) -> Path:
    """``arrays``: {task: {"query_keys", "query_scores", "gold"}} as the sweep keeps them."""
    names = sorted(arrays)
    payload: dict[str, np.ndarray] = {"tasks": np.array(names, dtype=str)}
    for index, name in enumerate(names):
        payload[f"scores_{index}"] = np.asarray(arrays[name]["query_scores"], dtype=np.float64)
        payload[f"gold_{index}"] = np.asarray(arrays[name]["gold"], dtype=np.int64)
        payload[f"keys_{index}"] = np.array([str(key) for key in arrays[name]["query_keys"]], dtype=str)
        if arrays[name].get("follow") is not None:
            payload[f"follow_{index}"] = np.asarray(arrays[name]["follow"], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **payload)
    return write_bytes_atomic(Path(run_directory) / FILE_NAME, buffer.getvalue())


def read(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{task: {"scores", "gold", "keys"[, "follow"]}}; raises ValueError / OSError on a damaged file."""
    try:
        return _read(path)
    except (zipfile.BadZipFile, EOFError, KeyError) as error:  # truncated, or an .npz of something else
        raise ValueError(f"{type(error).__name__}: {error}") from None


def _read(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        names = [str(name) for name in data["tasks"]]
        tasks = {}
        for index, name in enumerate(names):
            scores = data[f"scores_{index}"]
            gold, keys = data[f"gold_{index}"], data[f"keys_{index}"]
            if scores.ndim != 3 or len(gold) != len(scores) or len(keys) != len(scores):
                raise ValueError(f"task {name}: arrays of inconsistent shapes")
            tasks[name] = {"scores": scores, "gold": gold, "keys": keys.astype(str)}
            if f"follow_{index}" in data.files:
                follow = data[f"follow_{index}"]
                if len(follow) != len(scores):
                    raise ValueError(f"task {name}: arrays of inconsistent shapes")
                tasks[name]["follow"] = follow
    return tasks
