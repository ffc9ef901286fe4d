"""Any multiple-choice lm-eval task with false demonstrations: the task class of ``falsedemo wrap``'s configs.

A wrapped config ``include:``s the original task's YAML (so every field of the original, and any later change to
it, reaches the wrapped task: dataset, splits, process_docs, doc_to_text / doc_to_choice / doc_to_target,
delimiters, description, few-shot split and sampler, chat-template behaviour) and adds a ``falsedemo:`` section
(the task it wraps, the setting, the label mode) read here. lm-eval renders every prompt itself; only the answers
shown on the demonstrations change, through one hook: the demonstrations the sampler returns are remembered for
the prompt being built, and ``doc_to_target`` answers for them with the label the setting shows.

Pairing: for one query every setting shows the same demonstrations in the same order. The original sampler (or
``sampler: class_uniform``, the paper's draw) is reseeded per query from (task, query id, seed, k) and the
corruption uses a second stream seeded by (task, query id, seed) (``prompts.corrupted_labels``), so the prompts
depend neither on the order of the documents, nor on ``--limit``, nor on the process rank. A query's id is the
sha256 of its document's canonical JSON, or the field named by ``doc_id``.

Labels: where the choice list is the same for every document (letters, yes/no, a fixed label set), the classes are
its positions and corruption works on them as for our datasets; ``calibrated_acc`` uses that label set. Where choices
differ per document (answer texts, same count everywhere), a demonstration shows another of its own choices by the
same rules on choice positions; calibrated accuracy and ``follow_acc`` are left out there (a position is no class:
no per-label threshold and no consistent wrong answer to follow), and ``acc`` and ``true_label_prob`` (the
right answer's probability among the choices) are reported.

When the original draws its demonstrations from its evaluation split (no other split), the wrapped task splits it
in two by a seeded hash of each document: half the documents form the demonstration pool, the other half are
evaluated (recorded as ``configs.<task>.metadata.falsedemo.partition``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from lm_eval.api.task import ConfigurableTask

from lm_eval_false_demos import __version__
from lm_eval_false_demos.core.corruption import get_setting, shows_false_labels
from lm_eval_false_demos.core.datasets import Example
from lm_eval_false_demos.core.prompts import Prompt, class_uniform_demos, corrupted_labels, stream_seed
from lm_eval_false_demos.core.task_names import DEFAULT_FEWSHOT_SEED
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat
from lm_eval_false_demos.integrations.tasks import choice_outcome, choice_scores

logger = logging.getLogger(__name__)

WRAP_SECTION = "falsedemo"  # the generated config's own keys, taken out before lm-eval's TaskConfig sees them
LABEL_MODES = ("fixed", "per_document")
SAMPLERS = ("task", "class_uniform")
# Share of a single evaluation split that becomes the demonstration pool (as our single-split datasets).
POOL_SHARE = 0.5
FIXED_METRICS_NOTE = "calibrated_acc over the fixed label set"
PER_DOCUMENT_METRICS_NOTE = ("acc and true_label_prob only: choices differ per document, so no label set to "
                             "calibrate over or follow")


@dataclass(frozen=True)
class DemoDraw:
    docs: tuple
    true_labels: tuple[int, ...]
    shown_labels: tuple[int, ...]
    shift: int


def document_id(doc, field: str | None = None) -> str:
    """A document's identity for the seeded streams: a field's value, or the sha256 of its canonical JSON (the
    same wherever and in whatever order it is read)."""
    if field is not None:
        return str(doc[field])
    text = json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def in_pool(stream: str, doc_key: str) -> bool:
    return stream_seed("partition", stream, doc_key) % 1_000_000 < POOL_SHARE * 1_000_000


class _PairedSampler:
    """Stands in for the task's lm-eval sampler: each query's demonstrations come from the original sampler
    reseeded for that query (or the paper's class-uniform draw), and their shown labels are recorded."""

    def __init__(self, task: "WrappedTask", inner):
        self.task, self.inner = task, inner

    def set_rnd(self, seed):
        self.task.fewshot_seed = DEFAULT_FEWSHOT_SEED if seed is None else int(seed)
        return self

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        return self.task.draw_demonstrations(int(n), eval_doc, self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class WrappedTask(ConfigurableTask):
    """An lm-eval multiple-choice task whose demonstrations show labels chosen by a corruption setting."""

    def __init__(self, config: dict | None = None, **kwargs):
        config = dict(config or {})
        config.pop("class", None)
        options = dict(config.pop(WRAP_SECTION, None) or {})
        name = config.get("task")
        for key in ("wraps", "setting", "labels"):
            if key not in options:
                raise FalseDemoError(f"task {name!r}: its '{WRAP_SECTION}:' section needs '{key}'; re-run falsedemo wrap")
        if config.get("output_type") != "multiple_choice":
            raise FalseDemoError(
                f"task {name!r} wraps {options['wraps']!r}, whose output_type is now {config.get('output_type')!r}; "
                "only multiple_choice tasks can be wrapped"
            )
        self.wrapped_task = str(options["wraps"])
        self.corruption = get_setting(options["setting"])
        self.setting = self.corruption.name
        self.label_mode = options["labels"]
        if self.label_mode not in LABEL_MODES:
            raise FalseDemoError(f"task {name!r}: labels {self.label_mode!r}; allowed: {', '.join(LABEL_MODES)}")
        self.sampler_kind = options.get("sampler", "task")
        if self.sampler_kind not in SAMPLERS:
            raise FalseDemoError(f"task {name!r}: sampler {self.sampler_kind!r}; allowed: {', '.join(SAMPLERS)}")
        self.doc_id_field = options.get("doc_id")
        self.stream = str(options.get("stream") or self.wrapped_task)
        self.dataset_key = str(options.get("name") or self.wrapped_task)
        metadata = dict(config.get("metadata") or {})
        self.setting_parameters = self.corruption.parameter_values(metadata)
        self.model_dtype = metadata.get("dtype")  # model_args reach the metadata (lm-eval's CLI), for the error line
        self.fewshot_seed = DEFAULT_FEWSHOT_SEED
        self._partition: bool | None = None
        self._query = None
        self._shown: dict[int, int] = {}
        self._last: DemoDraw | None = None
        self._pool_examples = None
        self._documents: dict = {}
        super().__init__(config=config, **kwargs)
        self.config.process_results = None  # ours below, whatever the original's
        if self.multiple_input:
            raise FalseDemoError(
                f"task {name!r}: {self.wrapped_task} puts its choices in the context (doc_to_text gives an index); "
                "only tasks whose choices are continuations can show a wrong answer on a demonstration"
            )
        self.labels = self._check_labels()
        if hasattr(self, "sampler"):
            self.sampler = _PairedSampler(self, self.sampler)
        self.config.metadata = {
            **(self.config.metadata or {}),
            "plugin_version": __version__,
            "falsedemo": {
                "wraps": self.wrapped_task, "setting": self.setting, "labels": self.label_mode,
                "label_set": list(self.labels) if self.labels else None, "sampler": self.sampler_kind,
                "partition": ({"pool_share": POOL_SHARE, "pool": len(self._pool_docs()),
                               "queries": len(self.eval_docs)} if self._partitioned() else None),
                "metrics": FIXED_METRICS_NOTE if self.label_mode == "fixed" else PER_DOCUMENT_METRICS_NOTE,
                **({"parameters": self.setting_parameters} if self.setting_parameters else {}),
            },
            "data_provenance": self.data_provenance(),
        }

    # ---- documents: the pool and the evaluated documents --------------------------------------------------
    def _eval_split(self) -> str | None:
        if self.has_test_docs():
            return self.config.test_split
        return self.config.validation_split if self.has_validation_docs() else None

    def _partitioned(self) -> bool:
        """True when the original's demonstrations would come from its evaluation split."""
        if self._partition is None:
            fewshot = compat.fewshot_settings(self)
            if fewshot["split"] is not None:
                self._partition = fewshot["split"] == self._eval_split()
            elif fewshot["samples"] is not None:
                self._partition = False
            else:  # lm-eval's rule: training, else validation, else the test documents
                self._partition = not self.has_training_docs() and not (
                    self.has_validation_docs() and self.config.validation_split != self._eval_split())
        return self._partition

    def doc_key(self, doc) -> str:
        return document_id(doc, self.doc_id_field)

    def _original_eval_docs(self):
        # process_docs may be costly (a filter over a large file): run it once per task object
        if self._documents.get("eval") is None:
            self._documents["eval"] = super().eval_docs
        return self._documents["eval"]

    def _pool_docs(self) -> list:
        if self._documents.get("pool") is None:
            if self._partitioned():
                pool = [doc for doc in self._original_eval_docs() if in_pool(self.stream, self.doc_key(doc))]
            else:
                pool = list(super().fewshot_docs())
            self._documents["pool"] = pool
        return self._documents["pool"]

    def fewshot_docs(self):
        return self._pool_docs()

    @property
    def eval_docs(self):
        docs = self._original_eval_docs()
        if not self._partitioned():
            return docs
        if self._documents.get("queries") is None:
            keep = [index for index, doc in enumerate(docs) if not in_pool(self.stream, self.doc_key(doc))]
            self._documents["queries"] = docs.select(keep) if hasattr(docs, "select") else [docs[i] for i in keep]
        return self._documents["queries"]

    # ---- labels ----------------------------------------------------------------------------------------------
    def gold(self, doc) -> int:
        """The original's answer as a choice position (lm-eval's rule: an index, or a choice's text)."""
        target = ConfigurableTask.doc_to_target(self, doc)
        choices = self.doc_to_choice(doc)
        if isinstance(target, str):
            if target not in choices:
                raise FalseDemoError(f"task {self.config.task}: target {target!r} is not one of the choices {choices}")
            return choices.index(target)
        if isinstance(target, (list, tuple)):
            raise FalseDemoError(f"task {self.config.task}: documents with several targets cannot be wrapped")
        if not 0 <= int(target) < len(choices):
            raise FalseDemoError(f"task {self.config.task}: target {target!r} is outside the {len(choices)} choices")
        return int(target)

    def _check_labels(self) -> tuple[str, ...] | None:
        """The fixed label set (or None for per-document choices), checked against every document."""
        choice_lists = [tuple(self.doc_to_choice(doc)) for doc in [*self.eval_docs, *self._pool_docs()]]
        counts = sorted({len(choices) for choices in choice_lists})
        if len(counts) != 1 or counts[0] < 2:
            raise FalseDemoError(
                f"task {self.config.task}: documents have {', '.join(map(str, counts))} choices; wrapping needs the "
                "same number (at least 2) for every document"
            )
        self._choice_sets = set(choice_lists)
        fixed = len(self._choice_sets) == 1
        if self.sampler_kind == "class_uniform" and not fixed:
            raise FalseDemoError(f"task {self.config.task}: sampler class_uniform needs a fixed label set; "
                                 f"{self.wrapped_task}'s choices differ per document")
        if self.label_mode == "fixed" and not fixed:
            raise FalseDemoError(
                f"task {self.config.task}: written for a fixed label set, but {self.wrapped_task}'s choices now differ "
                "per document; re-run falsedemo wrap"
            )
        self.num_classes = counts[0]
        return choice_lists[0] if self.label_mode == "fixed" else None

    def has_fixed_labels(self) -> bool:
        return len(self._choice_sets) == 1

    def fixed_label_set(self) -> tuple[str, ...] | None:
        return next(iter(self._choice_sets)) if self.has_fixed_labels() else None

    @property
    def partitioned(self) -> bool:
        return self._partitioned()

    @property
    def label_words(self) -> tuple[str, ...]:
        if self.labels is None:
            raise FalseDemoError(f"task {self.config.task}: choices differ per document; there is no label set")
        return self.labels

    # ---- demonstrations --------------------------------------------------------------------------------------
    def set_fewshot_seed(self, seed: int | None = None) -> None:
        super().set_fewshot_seed(seed)
        self.fewshot_seed = DEFAULT_FEWSHOT_SEED if seed is None else int(seed)

    def draw_demonstrations(self, n: int, eval_doc, inner) -> list:
        if self._query is None:
            raise FalseDemoError(f"task {self.config.task}: demonstrations are drawn for a query (fewshot_context)")
        query_key = self.doc_key(self._query)
        pool = inner.fewshot_docs() if hasattr(inner, "fewshot_docs") else list(inner.df)
        available = sum(1 for doc in pool if eval_doc is None or doc != eval_doc)
        if n > available:
            raise FalseDemoError(
                f"task {self.config.task}: k={n} demonstrations requested but the demonstration pool holds {available}"
                f"{' (half of the evaluation split, the other half is evaluated)' if self._partitioned() else ''}; "
                f"use --num_fewshot <= {available}"
            )
        if self.sampler_kind == "class_uniform":
            examples, by_key = self._pool_as_examples(pool)
            chosen = class_uniform_demos(self.stream, self.labels, query_key, examples, n, self.fewshot_seed)
            docs = [by_key[example.uid] for example in chosen]
        else:
            compat.reseed_sampler(inner, stream_seed("demos", self.stream, query_key, self.fewshot_seed, n))
            docs = list(inner.sample(n, eval_doc=eval_doc))
        true_labels = [self.gold(doc) for doc in docs]
        shift, shown = corrupted_labels(self.stream, query_key, self.fewshot_seed, self.setting, true_labels,
                                        self.num_classes, self.setting_parameters)
        self._shown = {id(doc): label for doc, label in zip(docs, shown)}
        self._last = DemoDraw(tuple(docs), tuple(true_labels), tuple(shown), shift)
        return docs

    def _pool_as_examples(self, pool):
        if self._pool_examples is None or self._pool_examples[0] is not pool:
            examples = [Example(uid=self.doc_key(doc), fields=(), label=self.gold(doc)) for doc in pool]
            self._pool_examples = (pool, examples, {example.uid: doc for example, doc in zip(examples, pool)})
        return self._pool_examples[1], self._pool_examples[2]

    def doc_to_target(self, doc, doc_to_target=None):
        """The original's target, except on a demonstration of the prompt being built: the label shown there."""
        target = super().doc_to_target(doc, doc_to_target)
        shown = self._shown.get(id(doc))
        if shown is None:
            return target
        return shown if isinstance(target, int) else self.doc_to_choice(doc)[shown]

    def query_shift(self, doc) -> int:
        return corrupted_labels(self.stream, self.doc_key(doc), self.fewshot_seed, self.setting, [], self.num_classes)[0]

    def fewshot_context(self, doc, num_fewshot, *args, **kwargs):
        self._query, self._shown, self._last = doc, {}, None
        try:
            return super().fewshot_context(doc, num_fewshot, *args, **kwargs)
        finally:
            self._query, self._shown = None, {}
            if self._last is None:  # no demonstrations drawn (k = 0)
                self._last = DemoDraw((), (), (), self.query_shift(doc))

    def render_for(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                   fewshot_as_multiturn=False, chat_template=None):
        """(context, demo readout offsets, Prompt) for the sweep: lm-eval's own context, and where in it each
        demonstration's label starts (its leading space when the label follows one)."""
        context = self.fewshot_context(doc, int(num_fewshot), system_instruction=system_instruction,
                                       apply_chat_template=apply_chat_template,
                                       fewshot_as_multiturn=fewshot_as_multiturn, chat_template=chat_template)
        draw = self._last
        offsets, questions, words, position = [], [], [], 0
        for demo, shown in zip(draw.docs, draw.shown_labels):
            question = self.doc_to_text(demo)
            word = self.doc_to_choice(demo)[shown]
            start = context.find(question, position) if isinstance(question, str) else -1
            label_at = context.find(word, start + len(question)) if start >= 0 else -1
            if label_at < 0:
                raise FalseDemoError(f"task {self.config.task}: a demonstration's label {word!r} is not in the prompt")
            offsets.append(label_at - 1 if context[label_at - 1:label_at] == " " else label_at)
            questions.append(question)
            words.append(word)
            position = label_at + len(word)
        gold = self.gold(doc)
        prompt = Prompt(
            context=context, query_label=gold, demo_true_labels=draw.true_labels,
            demo_shown_labels=draw.shown_labels, shift=draw.shift, demo_readout_offsets=tuple(offsets),
            demo_uids=tuple(self.doc_key(demo) for demo in draw.docs), num_classes=self.num_classes,
            demo_questions=tuple(questions), demo_label_words=tuple(words), query_text=str(self.doc_to_text(doc)),
        )
        return context, tuple(offsets), prompt

    # ---- scoring ---------------------------------------------------------------------------------------------
    def process_results(self, doc, results):
        scores = choice_scores(self.config.task, self.doc_key(doc), results, self.model_dtype)
        gold = self.gold(doc)
        if self.label_mode != "fixed":  # a choice position is not a class: nothing to calibrate over or follow
            return choice_outcome(scores, gold, None)
        follow = None
        if shows_false_labels(self.setting, self.config.num_fewshot):
            follow = self.corruption.follow_target(gold, self.num_classes, self.query_shift(doc))
        return {"calibrated_acc": (gold, scores.tolist()), **choice_outcome(scores, gold, follow)}

    def data_provenance(self) -> dict:
        """What was read, for results files: the wrapped task, its dataset, the pool and query counts and a
        fingerprint of the documents (as our datasets record theirs)."""
        pool, queries = self._pool_docs(), list(self.eval_docs)
        canonical = json.dumps({"pool": [self.doc_key(doc) for doc in pool],
                                "queries": [self.doc_key(doc) for doc in queries]}, separators=(",", ":"))
        return {
            "source": {"kind": "lm_eval_task", "task": self.wrapped_task, "dataset_path": self.config.dataset_path,
                       "dataset_name": self.config.dataset_name,
                       "dataset_kwargs": json.loads(json.dumps(self.config.dataset_kwargs or {}, default=str))},
            "pool": len(pool), "queries": len(queries),
            "fingerprint": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
        }
