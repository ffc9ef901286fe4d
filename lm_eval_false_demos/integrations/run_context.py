"""One home for an analysis run: the opened model and where its results go.

Every ``falsedemo`` analysis (sweep, heads, lens training) runs the same way:

1. :func:`open_model` loads the model through lm-eval's registry (:mod:`.loading`, as ``lm_eval --model ...``)
   and returns a :class:`RunContext`: the lm-eval model, its resolved modules, the readout lens, the encoder
   (HFLM's own ``tok_encode`` / ``_encode_pair`` via :mod:`.compat`), this process's rank and the number of
   processes, the parsed model options and the provenance every results file records (identity, versions,
   data source, command).
2. The analysis splits its work with :meth:`RunContext.map_in_order` (each process takes every
   ``world_size``-th item, the results are gathered in order on every process: one process or N give the same
   list) and returns a typed record.
3. :class:`RunOutput` is the run folder: exactly one process (rank 0, the *writer*) creates it, writes the
   checkpoint and, through the one writer of the record's kind, the results; the other processes only read a
   resumed checkpoint, so every process skips the same finished work.

A new analysis gets model loading, provenance, data parallelism, checkpoints, ``--resume`` and the one-writer
rule from here; its command-line module only maps flags to it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from lm_eval_false_demos.core import tuned_lens
from lm_eval_false_demos.core.architectures import PATH_OVERRIDES, ModelModules, resolve_modules
from lm_eval_false_demos.core.lens import Readout
from lm_eval_false_demos.core.data_loading import data_provenance_for, data_source_summary
from lm_eval_false_demos.core.files import canonical_model_args, versions
from lm_eval_false_demos.integrations import compat, loading
from lm_eval_false_demos.results import checkpoints, run_records

Item = TypeVar("Item")
Result = TypeVar("Result")

# Model classes that read lens= and the module path overrides themselves (integrations/models.py).
OWN_MODEL_CLASSES = ("hf-earlyexit", "hf-ablate")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """``--model`` and ``--model_args`` as given, and what of them reaches lm-eval's model constructor.

    ``lens=`` and the module path overrides (``layers_path=``, ...) are read by the run, not by
    ``from_pretrained``; packaged short names (``gemma-3-270m``) load from their converted folder; an analysis's
    defaults (e.g. ``dtype=float32``) fill what the user left out; ``device`` and ``batch_size`` given among the
    model args go beside them, as lm-eval passes them."""

    model: str
    given: dict  # the user's --model_args, as recorded in results files
    load: dict  # what the model constructor receives
    lens: tuned_lens.LensSpec
    path_overrides: dict
    device: str | None
    batch_size: int

    @classmethod
    def parse(cls, model: str, model_args: Mapping[str, Any] | None, *, device: str | None = None,
              batch_size: int = 1, defaults: Mapping[str, Any] | None = None) -> "ModelOptions":
        given = dict(model_args or {})
        lens = tuned_lens.parse_lens(given.get("lens"))  # checked before anything loads
        overrides = {key: given[key] for key in PATH_OVERRIDES if key in given}
        load = loading.resolve_embedded(given)
        load.pop("lens", None)
        if model not in OWN_MODEL_CLASSES:
            for key in PATH_OVERRIDES:
                load.pop(key, None)
        for key, value in (defaults or {}).items():
            load.setdefault(key, value)
        device = device or load.pop("device", None)
        load.pop("device", None)
        batch_size = int(load.pop("batch_size", batch_size))
        return cls(model=model, given=given, load=load, lens=lens, path_overrides=overrides, device=device,
                   batch_size=batch_size)

    @property
    def resolved(self) -> dict:
        """The given args with packaged short names resolved (what pins the weights: ``loading.model_identity``)."""
        return loading.resolve_embedded(self.given)


@dataclasses.dataclass
class RunContext:
    """An opened model and everything an analysis reads off it (see the module docstring)."""

    lm: Any  # the lm-eval model (HFLM or one of our subclasses)
    options: ModelOptions
    modules: ModelModules
    readout: Readout  # the lens (logit or tuned) and the model's unembedding, where accelerate put them
    rank: int
    world_size: int
    # The processes split the work (data parallel); False when they share one model instead (tensor
    # parallel: every process computes every item, rank 0 writes).
    data_parallel: bool = True

    # -- the model

    @property
    def model(self):
        return self.lm.model

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def max_length(self) -> int:
        return int(self.lm.max_length)

    @property
    def device(self):
        return getattr(self.lm, "device", self.options.device)

    @property
    def ablation(self):
        """The ``Ablation`` an ``hf-ablate`` (or ``hf-earlyexit`` with ablations) model applies; None otherwise."""
        return getattr(self.lm, "ablation", None)

    @property
    def lens(self) -> dict:
        """The lens record every result carries (kind, source, file, sha256, key)."""
        return self.readout.describe()

    def encode(self, text: str) -> list[int]:
        """A context's token ids as lm-eval's HFLM encodes it (its BOS rule)."""
        return list(self.lm.tok_encode(text))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as HFLM encodes a loglikelihood request."""
        return compat.encode_pair(self.lm, context, continuation)

    # -- processes

    @property
    def is_writer(self) -> bool:
        """The one process that writes results, figures, checkpoints and prints the summary."""
        return self.rank == 0

    @property
    def show_progress(self) -> bool:
        return self.is_writer

    @property
    def shards(self) -> int:
        """How many parts the work is split into (1: every process computes everything)."""
        return self.world_size if self.data_parallel else 1

    @property
    def shard(self) -> int:
        return self.rank if self.data_parallel else 0

    def gather(self, value: Any) -> list[Any]:
        """Every shard's ``value``, in order, on every process."""
        if self.shards <= 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def map_in_order(self, items: Sequence[Item], work: Callable[[Item], Result], progress: Any = None
                     ) -> list[Result]:
        """``[work(item) for item in items]``, the items split across the processes and the results gathered in
        order on every process (one process computes them all). ``progress``, a tqdm bar that ``work`` advances,
        is resized to this process's share, so it ends full."""
        if self.shards <= 1:
            return [work(item) for item in items]
        positions = shard_positions(len(items), self.shard, self.shards)
        if progress is not None:
            progress.reset(total=len(positions))
        mine = [(index, work(items[index])) for index in positions]
        return merge_in_order(self.gather(mine), len(items))

    def close(self) -> None:
        """Every process leaves the process group together (after the last collective)."""
        loading.leave_process_group(self.world_size)

    # -- provenance

    def identity(self) -> dict:
        return loading.model_identity(self.options.resolved, self.lm)

    def provenance(self, datasets: Iterable[str] = ()) -> dict:
        """What every results file records about the run: model, model args as given (canonical numbers),
        the weights' identity, package versions, the data read and its provenance, the processes."""
        return {
            "model": self.options.model,
            "model_args": canonical_model_args(self.options.given),
            "model_identity": self.identity(),
            "versions": versions(),
            "data_source": data_source_summary(),
            "data_provenance": data_provenance_for(datasets),
            "world_size": self.world_size,
        }


def shard_positions(count: int, shard: int, shards: int) -> range:
    """The positions of ``count`` items that shard ``shard`` of ``shards`` works on: every ``shards``-th."""
    return range(shard, count, shards)


def merge_in_order(parts: Iterable[Sequence[tuple[int, Result]]], count: int) -> list[Result]:
    """The shards' (position, result) pairs as one list in item order; every position exactly once."""
    merged: dict[int, Result] = {}
    for part in parts:
        for index, result in part:
            if index in merged:
                raise RuntimeError(f"item {index} was computed by two processes")
            merged[index] = result
    if len(merged) != count:
        raise RuntimeError(f"gathered {len(merged)} results for {count} items")
    return [merged[index] for index in range(count)]


def open_model(model: str, model_args: Mapping[str, Any] | None = None, *, batch_size: int = 1,
               device: str | None = None, defaults: Mapping[str, Any] | None = None, lm=None) -> RunContext:
    """Load ``model`` through lm-eval's registry (or take the loaded ``lm``) and open a run on it."""
    from lm_eval_false_demos.integrations.tasks import lend_tokenizer

    options = ModelOptions.parse(model, model_args, device=device, batch_size=batch_size, defaults=defaults)
    if lm is None:
        lm = loading.create_model(model, options.load, options.batch_size, options.device)
    # The tasks built for this run borrow the model's tokenizer and context length for their token budget.
    lend_tokenizer(options.given, lm.tokenizer, lm.max_length)
    rank, world_size = loading.process_rank_and_count(lm)
    modules = getattr(lm, "resolved_modules", None)
    if modules is None:  # lm-eval's plain hf: our model classes resolved theirs with the same overrides
        modules = resolve_modules(lm.model, **options.path_overrides)
    readout = Readout(lm.model, modules, tuned_lens.build_lens(options.lens, lm.model, modules.num_layers))
    return RunContext(lm=lm, options=options, modules=modules, readout=readout, rank=rank,
                      world_size=world_size, data_parallel="tp_plan" not in options.given)


def command_line() -> str:
    """The command as typed (``falsedemo sweep ...``), recorded in every results file."""
    name = Path(sys.argv[0]).name
    if name in ("__main__.py", "main.py", "cli"):  # python -m lm_eval_false_demos.cli[.main]
        name = "falsedemo"
    return " ".join([name] + sys.argv[1:])


class RunOutput:
    """The run folder of one analysis run and the one-writer rule.

    The writer creates the folder (after the model loads, so a run killed while loading leaves none), records
    the configuration in its checkpoint, saves finished parts and writes the results last. The other processes
    write nothing; on ``--resume`` they read the stored parts too, so all skip the same finished work.
    """

    def __init__(self, kind: str, output_path: str | Path, name: str, *, resume: str | Path | None = None,
                 arguments: Mapping[str, Any] | None = None, writer: bool = True, checkpointed: bool = True):
        self.kind, self.output_path, self.writer = kind, output_path, writer
        self.resuming = resume is not None
        self.arguments = dict(arguments or {})
        self.checkpointed = checkpointed
        if self.resuming:
            store = checkpoints.RunCheckpoint(resume)
        else:
            store = checkpoints.RunCheckpoint(root=output_path, name=name)
        self.checkpoint = store if writer else checkpoints.ReadOnlyCheckpoint(store)

    @property
    def directory(self) -> Path | None:
        return self.checkpoint.run_directory

    def begin(self, config: Mapping[str, Any], context: RunContext) -> None:
        """Record a new run's configuration, or check that a resumed run's is the interrupted one's.

        The writer was chosen before the model loaded (the launcher's RANK); the loaded model's rank must agree."""
        if self.writer != context.is_writer:
            raise RuntimeError(f"process {context.rank} of {context.world_size}: the launcher's RANK and the model's "
                               "process index disagree on which process writes")
        if self.resuming:
            self.checkpoint.resume(self.kind, config)
        elif self.checkpointed:
            self.checkpoint.start(self.kind, config, self.arguments, str(config.get("command", "")))

    def guard(self):
        """Around the run: an interrupted new run's folder goes away when nothing in it finished."""
        if not self.writer:
            return checkpoints.kept_or_discarded(None, self.kind, self.output_path, self.resuming)
        return checkpoints.kept_or_discarded(self.checkpoint, self.kind, self.output_path, self.resuming)

    def store(self, record: Any, **options) -> Any:
        """The writer stores ``record`` with the one writer of this run's kind (``results.run_records``) into the
        run folder (created now when not yet) and drops the checkpoint; the others do nothing and get None."""
        if not self.writer:
            return None
        if self.checkpoint.run_directory is None:
            self.checkpoint.run_directory = checkpoints.new_run_directory(self.checkpoint.root, self.checkpoint.name)
        written = run_records.store(self.kind, record, self.checkpoint.run_directory, **options)
        self.checkpoint.finish()
        return written


def seconds_since(started: float) -> float:
    return round(time.time() - started, 3)
