"""The run context's rules without a launch: how work is split across processes and gathered back, what of the
model args reaches the model, and that only the writing process writes."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lm_eval_false_demos.integrations.run_context import (
    ModelOptions,
    RunContext,
    RunOutput,
    merge_in_order,
    shard_positions,
)


@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=6))
def test_every_split_gathers_back_to_the_one_process_list(items, shards):
    """Whatever the number of items and processes, each item is computed by exactly one process and the gathered
    results are the one-process list, in order (also when some processes get nothing)."""
    parts = [[(index, items[index] * 3 + 1) for index in shard_positions(len(items), shard, shards)]
             for shard in range(shards)]
    assert sorted(index for part in parts for index, _ in part) == list(range(len(items)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # similar work per process
    assert merge_in_order(reversed(parts), len(items)) == [item * 3 + 1 for item in items]


def test_a_gather_missing_or_repeating_an_item_is_an_error():
    with pytest.raises(RuntimeError, match="gathered 1 results for 2 items"):
        merge_in_order([[(0, "a")]], 2)
    with pytest.raises(RuntimeError, match="item 0 was computed by two processes"):
        merge_in_order([[(0, "a")], [(0, "a"), (1, "b")]], 2)


def test_model_options_keep_what_the_run_reads_out_of_the_models_constructor():
    given_args = {"pretrained": "/m", "lens": "logit", "layers_path": "model.layers", "device": "cpu",
                  "batch_size": 4, "dtype": "bfloat16"}
    plain = ModelOptions.parse("hf", given_args, defaults={"dtype": "float32", "attn_implementation": "sdpa"})
    assert plain.load == {"pretrained": "/m", "dtype": "bfloat16", "attn_implementation": "sdpa"}
    assert plain.given == given_args and plain.path_overrides == {"layers_path": "model.layers"}
    assert (plain.device, plain.batch_size, plain.lens.kind) == ("cpu", 4, "logit")
    ours = ModelOptions.parse("hf-ablate", {"pretrained": "/m", "layers_path": "model.layers"}, device="cuda:1")
    assert ours.load == {"pretrained": "/m", "layers_path": "model.layers"}  # hf-ablate reads its overrides
    assert ours.device == "cuda:1" and ours.batch_size == 1


def test_only_the_writer_creates_the_run_folder_and_a_reader_sees_a_resumed_runs_parts(tmp_path):
    config = {"model": "hf", "date": 1.0}
    reader = RunOutput("heads", tmp_path / "runs", "heads_m", writer=False)
    reader.begin(config, SimpleNamespace(is_writer=False, rank=1, world_size=2))
    reader.checkpoint.save("scores", {"x": np.arange(3)})
    assert reader.checkpoint.load("scores") is None and reader.store({"anything": 1}) is None
    assert not (tmp_path / "runs").exists()

    writer = RunOutput("heads", tmp_path / "runs", "heads_m", writer=True)
    with pytest.raises(RuntimeError, match="disagree on which process writes"):
        writer.begin(config, SimpleNamespace(is_writer=False, rank=1, world_size=2))
    writer.begin(config, SimpleNamespace(is_writer=True, rank=0, world_size=2))
    writer.checkpoint.save("scores", {"x": np.arange(3)})
    (folder,) = (tmp_path / "runs").iterdir()

    resumed_reader = RunOutput("heads", tmp_path / "runs", "heads_m", resume=folder, writer=False)
    resumed_reader.begin({**config, "date": 2.0}, SimpleNamespace(is_writer=False, rank=1, world_size=2))
    assert resumed_reader.checkpoint.load("scores")["x"].tolist() == [0, 1, 2]
    resumed_reader.checkpoint.finish()
    assert (folder / "checkpoint").is_dir()  # only the writer removes it


@given(st.lists(st.integers(), max_size=30), st.integers(min_value=1, max_value=5), st.data())
def test_a_progress_bar_ends_full_on_every_process(items, shards, data):
    """A process's bar counts its own share of the items (not all of them), so it ends at 100% on every rank."""
    from tqdm.auto import tqdm

    shard = data.draw(st.integers(min_value=0, max_value=shards - 1))
    others = [[(index, item) for index, item in enumerate(items) if index % shards == other]
              for other in range(shards) if other != shard]
    context = SimpleNamespace(shards=shards, shard=shard, gather=lambda mine: [mine, *others])
    progress = tqdm(total=len(items), file=io.StringIO())

    def work(item):
        progress.update(1)
        return item

    assert RunContext.map_in_order(context, items, work, progress=progress) == items
    assert progress.n == progress.total == len(shard_positions(len(items), shard, shards))
