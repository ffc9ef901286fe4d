"""lm-eval adapter for the ``falsedemo_<key>_<setting>`` tasks: a thin ConfigurableTask over our core.

Prompts come from :func:`lm_eval_false_demos.core.prompts.build_prompt` (so analyses outside lm-eval rebuild
exactly the same text), with the task's ``num_fewshot`` and lm-eval's few-shot seed (the 4th ``--seed``
value, default 1234). The query keeps its true label; choices are the label words after
``target_delimiter`` " ". Which part of a label is scored is the model's business: lm-eval's ``hf``
scores the whole continuation, our ``hf-earlyexit``/``hf-ablate`` the first token of " " + label; here
the K per-choice scores are only renormalised over the K labels.

The token budget comes from what lm-eval merged into the task metadata (model_args: ``pretrained``,
``tokenizer``, ``gguf_file``, ``revision``, ``max_length``); the tokenizer is loaded once per process.
Extra options in metadata (``--metadata '{"wrong_share": 40}'``): ``wrong_share`` grades the permuted
setting (percent of demonstrations shown with the shifted label); ``sst2_format`` picks one of SST-2's 15
prompt formats for the ``falsedemo_sst2_<setting>`` tasks (``sst2_formats``). The
``falsedemo_sst2_formats_<setting>`` tasks hold all 15 formats of each query as 15 documents; their
calibrated accuracy is the mean of the 15 per-format calibrated accuracies (the paper's SST-2 figure).

``--apply_chat_template`` (``--fewshot_as_multiturn``, ``--system_instruction``) renders the same paired
prompt through the model's chat template (chat.py); lm-eval then drops the target delimiter, so the
choices are the bare label words after the assistant header. Every results file records the rendering
under ``configs.<task>.metadata``: ``prompt_mode`` (raw | chat_single | chat_multiturn) and
``chat_template_sha256``.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Mapping

import numpy as np
from lm_eval.api.task import ConfigurableTask

from lm_eval_false_demos import __version__
from lm_eval_false_demos.core import chat, embedded_models, precision
from lm_eval_false_demos.core.corruption import get_setting, shows_false_labels
from lm_eval_false_demos.core.data_loading import data_provenance, data_source, load_examples
from lm_eval_false_demos.core.datasets import get_spec
from lm_eval_false_demos.core.metrics import calibrated_accuracy, normalise
from lm_eval_false_demos.core.prompts import build_prompt, label_token_ids, query_shift, render_query
from lm_eval_false_demos.core.sst2_formats import check_format, format_spec, variant_key
from lm_eval_false_demos.core.task_names import DEFAULT_FEWSHOT_SEED
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat

logger = logging.getLogger(__name__)

# The task cannot see the model; our wrappers record their choice under config.falsedemo.label_scoring.
LABEL_SCORING_NOTE = (
    "hf-earlyexit/hf-ablate: as config.falsedemo.label_scoring (default first label token); "
    "other models: the whole label continuation"
)
_warned_no_budget = False


def calibrated_accuracy_aggregation(items) -> float:
    """lm-eval aggregation over the per-query ``(gold, normalised scores[, prompt format])`` items of all ranks.

    Thresholds are per prompt format (a format is its own dataset-level statistic); with several formats
    the result is the mean of the per-format calibrated accuracies, as the paper averages SST-2's formats.
    """
    by_format: dict[int, list] = {}
    for item in items:
        by_format.setdefault(int(item[2]) if len(item) > 2 else 0, []).append(item)
    values = []
    for _, format_items in sorted(by_format.items()):
        gold = [int(item[0]) for item in format_items]
        scores = np.array([list(item[1]) for item in format_items], dtype=np.float64)
        values.append(calibrated_accuracy(scores, gold))
    return float(np.mean(values))


@functools.lru_cache(maxsize=8)
def load_tokenizer_and_length(pretrained: str, tokenizer: str | None, gguf_file: str | None,
                              revision: str | None, trust_remote_code: bool, max_length: int | None):
    """(tokenizer, the max length HFLM would use) for these model args; cached per process.

    A packaged model's short name (``gemma-3-270m``) means its converted folder, by the rule the model wrappers
    use (even beside a folder of that name in the working directory), so the tokenizer is the evaluated model's."""
    import transformers

    pretrained = embedded_models.resolve_pretrained(pretrained)
    common = {"trust_remote_code": trust_remote_code}
    if revision:
        common["revision"] = revision
    if tokenizer:  # HFLM passes gguf_file to the tokenizer only when no tokenizer is given
        loaded = transformers.AutoTokenizer.from_pretrained(tokenizer, **common)
    else:
        loaded = transformers.AutoTokenizer.from_pretrained(
            pretrained, **common, **({"gguf_file": gguf_file} if gguf_file else {}))
    if max_length:
        return loaded, int(max_length)
    config = transformers.AutoConfig.from_pretrained(
        pretrained, **common, **({"gguf_file": gguf_file} if gguf_file else {}))
    return loaded, compat.resolve_max_length(config, loaded)


# (tokenizer, max length) of models already loaded in this process, keyed like load_tokenizer_and_length.
_LENT_TOKENIZERS: dict[tuple, tuple] = {}


def _tokenizer_key(metadata: Mapping[str, Any]) -> tuple:
    pretrained, tokenizer = metadata.get("pretrained"), metadata.get("tokenizer")
    return (
        pretrained if isinstance(pretrained, str) else tokenizer,
        tokenizer if isinstance(tokenizer, str) else None,
        metadata.get("gguf_file"), metadata.get("revision"), bool(metadata.get("trust_remote_code", False)),
        int(metadata["max_length"]) if metadata.get("max_length") else None,
    )


def lend_tokenizer(model_args: Mapping[str, Any], tokenizer, max_length: int) -> None:
    """A model loaded before its tasks lends them its tokenizer and context length (HFLM's ``max_length``, the
    rule :func:`load_tokenizer_and_length` follows), instead of a second load of the same files: a large
    vocabulary's tokenizer.json takes seconds to parse."""
    _LENT_TOKENIZERS[_tokenizer_key(model_args)] = (tokenizer, int(max_length))


def _budget_from_metadata(metadata: dict, task_name: str):
    global _warned_no_budget
    pretrained = metadata.get("pretrained")
    tokenizer = metadata.get("tokenizer")
    if not isinstance(pretrained, str) and not isinstance(tokenizer, str):
        if not _warned_no_budget:
            logger.warning(
                "falsedemo tasks: no tokenizer known (no 'pretrained'/'tokenizer' in model args or metadata); "
                "prompts are built without a token budget, so a model with a short context may truncate them"
            )
            _warned_no_budget = True
        return None
    key = _tokenizer_key(metadata)
    if key in _LENT_TOKENIZERS:
        return _LENT_TOKENIZERS[key]
    try:
        return load_tokenizer_and_length(*key)
    except Exception as error:
        raise FalseDemoError(
            f"task {task_name}: could not load the tokenizer for pretrained={pretrained!r} "
            f"tokenizer={tokenizer!r} to budget the prompt: {error}"
        ) from error


class FalseDemoTask(ConfigurableTask):
    """One dataset x setting; ``dataset_kwargs`` carries ``falsedemo_dataset`` and ``falsedemo_setting``."""

    def __init__(self, config: dict | None = None, **kwargs):
        config = dict(config or {})
        config.pop("class", None)
        options = dict(config.get("dataset_kwargs") or {})
        if "falsedemo_dataset" not in options or "falsedemo_setting" not in options:
            raise FalseDemoError(
                f"task {config.get('task')!r}: dataset_kwargs needs falsedemo_dataset and falsedemo_setting"
            )
        self.spec = get_spec(options["falsedemo_dataset"])
        self.corruption = get_setting(options["falsedemo_setting"])
        self.setting = self.corruption.name
        metadata = dict(config.get("metadata") or {})
        # Prompt formats (SST-2 only): the YAML's, or --metadata sst2_format for the format-0 tasks.
        self.formats = tuple(check_format(index) for index in options.get("falsedemo_formats", [0]))
        if metadata.get("sst2_format") is not None and self.spec.key == "sst2" and self.formats == (0,):
            self.formats = (check_format(metadata["sst2_format"]),)
        self.format_specs = {index: format_spec(index, self.spec) for index in self.formats}
        budget = _budget_from_metadata(metadata, config.get("task"))
        if budget is not None and len(self.formats) > 1:
            self._drop_unscorable_formats(budget[0], config.get("task"))
        if len(self.formats) == 1:
            self.spec = self.format_specs[self.formats[0]]
        # The name results use for this dataset: sst2_f3 for one SST-2 format, sst2_formats for all of them.
        if self.spec.key != "sst2":
            self.dataset_key = self.spec.key
        else:
            self.dataset_key = variant_key(self.formats[0]) if len(self.formats) == 1 else "sst2_formats"
        # The setting's own parameters (wrong_share grades permuted) from --metadata; other settings ignore them.
        self.setting_parameters = self.corruption.parameter_values(metadata)
        self.model_dtype = metadata.get("dtype")  # model_args reach the metadata (lm-eval's CLI), for the error line
        self.fewshot_seed = DEFAULT_FEWSHOT_SEED
        super().__init__(config=config, **kwargs)
        # Written into every results file (configs.<task>.metadata): where the data came from (and a fingerprint
        # of the examples), and which code.
        self.config.metadata = {
            **(self.config.metadata or {}),
            "data_source": data_source(self.spec.key),
            "data_provenance": data_provenance(self.spec.key),
            "plugin_version": __version__,
            "label_scoring": LABEL_SCORING_NOTE,
            **({"sst2_format": list(self.formats) if len(self.formats) > 1 else self.formats[0]}
               if self.spec.key == "sst2" else {}),
        }
        self._chat_checked = None
        if budget is None:
            self.token_counter, self.max_tokens, self.tokenizer = None, None, None
        else:
            tokenizer, self.max_tokens = budget
            self.tokenizer = tokenizer
            for spec in self.format_specs.values():
                label_token_ids(tokenizer, spec.label_word_list)
            self.token_counter = functools.partial(_count_tokens, tokenizer)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def label_words(self) -> tuple[str, ...]:
        return tuple(self.spec.label_word_list)

    def doc_key(self, doc) -> str:
        """The query's identity in the seeded streams (its example's uid)."""
        return str(doc["uid"])

    def data_provenance(self) -> dict:
        return data_provenance(self.spec.key)

    def _drop_unscorable_formats(self, tokenizer, task_name) -> None:
        """The all-formats task leaves out formats whose label words share a first token for this tokenizer
        (" 0" / " 5" split off the space in Gemma's and SmolLM2's): the mean is over the rest, as recorded."""
        usable = []
        for index, spec in self.format_specs.items():
            try:
                label_token_ids(tokenizer, spec.label_word_list)
            except FalseDemoError as error:
                logger.warning("task %s: SST-2 prompt format %d left out: %s", task_name, index, error)
            else:
                usable.append(index)
        if not usable:
            raise FalseDemoError(f"task {task_name}: no SST-2 prompt format can be scored by its first label token")
        self.formats = tuple(usable)
        self.format_specs = {index: self.format_specs[index] for index in usable}

    def download(self, dataset_kwargs=None, **kwargs) -> None:
        import datasets as hf_datasets

        self.pool, queries = load_examples(self.spec.key)
        self.queries = {query.uid: query for query in queries}
        # Query-major: one document per query and format, each with its format's label words as choices.
        docs = [{"uid": q.uid, "format": index, "query": render_query(spec, q), "label": q.label,
                 "choices": spec.label_word_list}
                for q in queries for index, spec in self.format_specs.items()]
        self.dataset = hf_datasets.DatasetDict({"queries": hf_datasets.Dataset.from_list(docs)})

    def fewshot_docs(self):
        return None  # demonstrations are chosen by prompts.build_prompt, not by an lm-eval sampler

    def set_fewshot_seed(self, seed: int | None = None) -> None:
        super().set_fewshot_seed(seed)
        self.fewshot_seed = DEFAULT_FEWSHOT_SEED if seed is None else int(seed)

    def build_prompt_for(self, doc: dict, num_fewshot: int):
        return build_prompt(
            self.format_specs[int(doc.get("format", self.formats[0]))], self.queries[doc["uid"]], self.pool, int(num_fewshot), self.setting, self.fewshot_seed,
            wrong_share=self.setting_parameters.get("wrong_share"),
            token_counter=self.token_counter, max_tokens=self.max_tokens,
        )

    def fewshot_context(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                        fewshot_as_multiturn=False, chat_template=None, gen_prefix=None, **kwargs) -> str:
        return self.render_for(doc, num_fewshot, system_instruction, apply_chat_template, fewshot_as_multiturn,
                               chat_template)[0]

    def render_for(self, doc, num_fewshot, system_instruction=None, apply_chat_template=False,
                   fewshot_as_multiturn=False, chat_template=None):
        """(context, demo readout offsets, Prompt) as ``fewshot_context`` renders them with these flags."""
        prompt = self.build_prompt_for(doc, num_fewshot)
        if not apply_chat_template:
            if system_instruction:
                raise FalseDemoError(
                    f"task {self.config.task}: --system_instruction needs --apply_chat_template (it becomes the "
                    "system message); raw few-shot prompts are the paper's text without one"
                )
            self._record_mode("raw", None)
            return prompt.context, prompt.demo_readout_offsets, prompt
        lm = getattr(chat_template, "__self__", None)
        template = None
        if lm is not None and getattr(lm, "tokenizer", None) is not None:
            name = getattr(lm, "pretrained", None)
            template = chat.check_has_template(lm.tokenizer, name if isinstance(name, str) else str(lm.tokenizer.name_or_path))
        rendering = chat.render(prompt, chat_template, bool(fewshot_as_multiturn), system_instruction)
        self._record_mode(rendering.mode, chat.template_sha256(template))
        self._check_chat_prompt(rendering.context)
        return rendering.context, rendering.demo_readout_offsets, prompt

    def _record_mode(self, mode: str, sha256: str | None) -> None:
        # Results files carry the rendering (configs.<task>.metadata), so modes never mix in one row.
        self.config.metadata = {**(self.config.metadata or {}), "prompt_mode": mode, "chat_template_sha256": sha256}

    def _check_chat_prompt(self, context: str) -> None:
        """The query's label spelling after the assistant header must keep distinct first tokens, and the
        templated prompt must fit the model (the demonstrations were drawn within the raw text's budget)."""
        if self.tokenizer is None:
            return
        lead = " " if context.endswith(" ") else ""
        if self._chat_checked != lead:
            for spec in self.format_specs.values():
                label_token_ids(self.tokenizer, spec.label_word_list, lead=lead)
            self._chat_checked = lead
        words = [word for spec in self.format_specs.values() for word in spec.label_word_list]
        length = self.token_counter(context) + max(self.token_counter(lead + word) for word in words)
        if self.max_tokens is not None and length + 1 > self.max_tokens:
            raise FalseDemoError(
                f"task {self.config.task}: the chat-templated prompt takes {length} tokens, more than the model's "
                f"{self.max_tokens}; use a smaller --num_fewshot"
            )

    def process_results(self, doc, results):
        scores = choice_scores(self.config.task, doc["uid"], results, self.model_dtype)
        gold = int(doc["label"])
        follow = None
        if shows_false_labels(self.setting, self.config.num_fewshot):
            follow = self.corruption.follow_target(gold, self.spec.num_classes,
                                                   query_shift(self.spec, doc["uid"], self.fewshot_seed))
        item = (gold, scores.tolist()) if len(self.formats) == 1 else (gold, scores.tolist(), int(doc["format"]))
        return {"calibrated_acc": item, **choice_outcome(scores, gold, follow)}


def choice_scores(task: str, doc_key, results, dtype) -> np.ndarray:
    """One document's K choice scores (log-likelihoods normalised over the choices). A -inf or NaN would become
    a score of NaN or 0 and a silent 0.0 accuracy, so a non-finite log-likelihood stops the run in one line
    naming the dtype."""
    log_likelihoods = [float(result[0]) for result in results]
    if not all(math.isfinite(value) for value in log_likelihoods):
        raise FalseDemoError(f"task {task} doc {doc_key}: " + precision.non_finite_message(
            f"the log-likelihoods of the choices {log_likelihoods}", dtype))
    return normalise(log_likelihoods)


def choice_outcome(scores: np.ndarray, gold: int, follow: int | None) -> dict[str, float]:
    """The per-document metrics every task reports: acc, true_label_prob and, where a false label was shown
    (``follow`` not None), follow_acc."""
    predicted = int(np.argmax(scores))
    outcome = {"acc": float(predicted == gold), "true_label_prob": float(scores[gold])}
    if follow is not None:
        outcome["follow_acc"] = float(predicted == follow)
    return outcome


def _count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
