"""lm-eval models ``hf-earlyexit`` and ``hf-ablate``: HFLM subclasses, thin over lens.py and interventions.py.

Both accept every option below, so early exit and ablations combine; they differ only in what they
require: ``hf-earlyexit`` needs ``exit_layer``, ``hf-ablate`` needs at least one of ``heads``,
``attn_layers``, ``mlp_layers`` (and may add ``exit_layer``). Batching, devices, dtypes, ``gguf_file=``
and ``accelerate launch`` are HFLM's own; only ``_model_call`` (logits) and the request tokenisation
(first-label-token scoring) are changed.

Model args (all comma- and dot-free, so lm-eval's parsers cannot corrupt them):
  exit_layer=12          residual after block 12 through the model's own final norm + head; 0..L or -L-1..-1
  heads=14:6;16:7        zero heads (block:head, blocks 0..L-1); also heads=@heads.json (key "top_k") or heads=auto
  attn_layers=16-27      zero whole attention blocks (block indices; also 3;5;7-9 or 12- to the end)
  mlp_layers=16-27       zero whole MLP blocks
  positions=last|all     where ablations act: the last input position of each row (the label readout) or all
  head_method=zero|qkv   true zero of the head's write (default) or the paper's q/k/v zeroing
  label_scoring=first|full  ``falsedemo_*`` tasks: score the continuation by its first token (default) or fully
  lens=logit|tuned:<dir or hub id>  read layers < L with the logit lens (default) or a tuned lens (tuned_lens.py)
  layers_path=, norm_path=, head_path=, attn_path=, attn_out_path=, mlp_path=  module paths for other models
``pretrained=gemma-3-270m`` / ``smollm2-135m`` resolve to the packaged GGUF models (embedded_models.py).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from lm_eval_false_demos.analysis import head_prompts
from lm_eval_false_demos.analysis.head_scores import DEFAULT_TOP_K
from lm_eval_false_demos.core import embedded_models
from lm_eval_false_demos.core.ablation_specs import (
    HEAD_METHODS,
    POSITIONS,
    TP_QKV_REFUSAL,
    make_ablation,
    parse_blocks,
    parse_heads,
)
from lm_eval_false_demos.core.architectures import PATH_OVERRIDES, resolve_modules
from lm_eval_false_demos.core.chat import label_token_index
from lm_eval_false_demos.core.files import canonical_model_args
from lm_eval_false_demos.core.interventions import ablate
from lm_eval_false_demos.core.lens import Readout, check_layer
from lm_eval_false_demos.core.lens_parity import check_parity
from lm_eval_false_demos.core.task_names import TASK_PREFIX
from lm_eval_false_demos.core.tuned_lens import build_lens, parse_lens
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat

LABEL_SCORING = ("first", "full")
OWN_ARGS = (
    "exit_layer", "heads", "attn_layers", "mlp_layers", "positions", "head_method", "label_scoring", "lens",
) + PATH_OVERRIDES
# Spellings from other tools that would otherwise be forwarded silently to from_pretrained.
_FOREIGN_SPELLINGS = ("ablate_heads", "ablate_attn", "ablate_mlp", "layer", "head_ablation", "early_exit")


def hflm_arg_names() -> set[str]:
    return set(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}


def _reject_lookalikes(kwargs: dict) -> None:
    known = hflm_arg_names()
    for key in kwargs:
        if key in known:
            continue
        close = difflib.get_close_matches(key, OWN_ARGS, n=1, cutoff=0.75)
        if key in _FOREIGN_SPELLINGS or close:
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise FalseDemoError(f"unknown model arg {key}={kwargs[key]!r}{hint} allowed: {', '.join(OWN_ARGS)}")


def _check_integer_layer(exit_layer) -> None:
    """Before the load the layer count is unknown, so only the type is checked (the range after the load)."""
    if isinstance(exit_layer, bool) or not isinstance(exit_layer, (int, float)) or not float(exit_layer).is_integer():
        raise FalseDemoError(
            f"exit_layer={exit_layer!r} is not an integer; allowed: 0..L, L the model's number of blocks "
            "(0 is the embeddings, L the last block; -1..-L-1 count from the end)"
        )


def check_dtype(dtype: Any) -> None:
    """``dtype=`` names a torch floating dtype or ``auto``, as HFLM expects (it would fail in ``getattr(torch, ...)``)."""
    if dtype is None or dtype == "auto":
        return
    if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype) \
            or not getattr(torch, dtype).is_floating_point:
        raise FalseDemoError(f"dtype={dtype!r} is not allowed; allowed: auto, float32, bfloat16, float16 (torch "
                             "floating dtypes)")


def _choice(name: str, value, allowed) -> str | None:
    if value is None:
        return None
    if value not in allowed:
        raise FalseDemoError(f"{name}={value!r} is not allowed; allowed: {', '.join(allowed)}")
    return value


class _FalseDemoHFLM(compat.ScoredColumnsLogits, HFLM):
    _alias = ""

    def __init__(
        self,
        pretrained="gemma-3-270m",
        exit_layer=None,
        heads=None,
        attn_layers=None,
        mlp_layers=None,
        positions=None,
        head_method=None,
        label_scoring=None,
        lens=None,
        layers_path=None,
        norm_path=None,
        head_path=None,
        attn_path=None,
        attn_out_path=None,
        mlp_path=None,
        **kwargs,
    ):
        _reject_lookalikes(kwargs)
        # Everything checkable without the model fails here, before the (slow) load.
        check_dtype(kwargs.get("dtype"))
        if exit_layer is not None:
            _check_integer_layer(exit_layer)
        self._label_scoring = _choice("label_scoring", label_scoring, LABEL_SCORING) or "first"
        self._lens_spec = parse_lens(lens)
        _choice("positions", positions, POSITIONS)
        _choice("head_method", head_method, HEAD_METHODS)
        parsed_heads = parse_heads(heads)
        for name, spec in (("attn_layers", attn_layers), ("mlp_layers", mlp_layers)):
            if isinstance(spec, str) and spec.strip().endswith("-"):
                continue  # open ranges need the block count
            parse_blocks(spec, None, name)
        ablating = bool(parsed_heads or attn_layers not in (None, "") or mlp_layers not in (None, ""))
        if not ablating and (positions is not None or head_method is not None):
            raise FalseDemoError(
                "positions= and head_method= only apply to ablations; add heads=, attn_layers= or mlp_layers="
            )
        if head_method is not None and not parsed_heads:
            raise FalseDemoError("head_method= applies to heads= only; no heads were given")
        if head_method == "qkv" and kwargs.get("tp_plan") is not None:
            raise FalseDemoError(TP_QKV_REFUSAL)
        self._check_required(exit_layer, ablating)

        self._requested = {
            key: value
            for key, value in dict(
                exit_layer=exit_layer, heads=heads, attn_layers=attn_layers, mlp_layers=mlp_layers,
                positions=positions, head_method=head_method, label_scoring=label_scoring, lens=lens,
            ).items()
            if value is not None
        }
        self._pretrained_name = pretrained if isinstance(pretrained, str) else None
        # What the user's --model_args held (lm-eval adds batch_size, max_batch_size and device itself).
        self._given_args = {"pretrained": pretrained, **self._requested, **{
            key: value for key, value in kwargs.items() if key not in ("batch_size", "max_batch_size", "device")
        }}
        self._given_args.update({key: value for key, value in dict(
            layers_path=layers_path, norm_path=norm_path, head_path=head_path, attn_path=attn_path,
            attn_out_path=attn_out_path, mlp_path=mlp_path).items() if value is not None})
        if embedded_models.is_embedded(pretrained):
            pretrained = embedded_models.resolve_pretrained(pretrained)
        try:
            super().__init__(pretrained=pretrained, **kwargs)
        except TypeError:  # as `lm_eval --model hf-earlyexit` loads it: a model arg nothing takes is one line
            from lm_eval_false_demos.integrations.loading import refuse_args_nothing_takes

            refuse_args_nothing_takes(self._alias or "hf", {"pretrained": pretrained, **kwargs})
            raise

        overrides = dict(
            layers_path=layers_path, norm_path=norm_path, head_path=head_path,
            attn_path=attn_path, attn_out_path=attn_out_path, mlp_path=mlp_path,
        )
        self._falsedemo_modules = resolve_modules(self.model, **overrides)
        num_layers = self._falsedemo_modules.num_layers
        self._exit_layer = None if exit_layer is None else check_layer(exit_layer, num_layers, "exit_layer")
        self._readout = Readout(self.model, self._falsedemo_modules,
                                build_lens(self._lens_spec, self.model, num_layers))
        self._lens_parity = None  # filled on the first batch (lens_parity.py)
        self._ablation = None
        if ablating:
            if parse_heads(heads) == "auto":
                # The default scoring task's prompts, as `falsedemo heads` reads them (lm-eval's task, this
                # model's encoding and max_length).
                from lm_eval_false_demos.integrations.head_runs import discover_heads

                heads = discover_heads(self, DEFAULT_TOP_K, head_prompts.DEFAULT_TASK, head_prompts.DEFAULT_NUM_PROMPTS,
                                       head_prompts.DEFAULT_SEED, given_args=self._given_args)
            self._ablation = make_ablation(
                self.model, heads=heads, attn_layers=attn_layers, mlp_layers=mlp_layers,
                positions=positions or "last", head_method=head_method or "zero",
                modules=self._falsedemo_modules,
            )
            if self._exit_layer is not None:
                skipped = sorted(
                    {layer for layer, _ in self._ablation.heads}
                    | set(self._ablation.attn_layers) | set(self._ablation.mlp_layers)
                )
                skipped = [layer for layer in skipped if layer >= self._exit_layer]
                if skipped:
                    raise FalseDemoError(
                        f"ablated layers {skipped} never run with exit_layer={exit_layer} (blocks "
                        f"{self._exit_layer}..{num_layers - 1} are skipped); ablate blocks 0..{self._exit_layer - 1}"
                    )
        self._path_overrides = {key: value for key, value in overrides.items() if value}
        self._row_lengths = None
        self._scoring_plan = None
        self._max_continuation = None

    def _check_required(self, exit_layer, ablating: bool) -> None:
        raise NotImplementedError

    # ---- what an analysis run reads off the model (integrations.run_context) ----------------------------
    @property
    def resolved_modules(self):
        """The model's blocks, norm, head and attention modules (``ModelModules``), path overrides applied."""
        return self._falsedemo_modules

    @property
    def ablation(self):
        """The validated ``Ablation`` this model applies (None without ``heads=``/``attn_layers=``/``mlp_layers=``)."""
        return self._ablation

    # ---- logits ----------------------------------------------------------------------------------------
    def _model_call(self, inps, attn_mask=None, labels=None):
        """Logits for HFLM's log-softmax. Scoring requests (``_loglikelihood_tokens``): only the positions HFLM
        reads, each row's last ``max continuation length`` input positions, as [B, W, V] float32 (the
        ``compat.ScoredColumnsLogits`` contract), never B x T x V; otherwise (generation) the full [B, T, V]."""
        if attn_mask is not None or labels is not None:
            raise FalseDemoError(f"{self._alias} supports decoder-only (causal) models only")
        row_lengths, self._row_lengths = self._row_lengths, None
        self.scored_columns = None
        num_layers = self._falsedemo_modules.num_layers
        layer = num_layers if self._exit_layer is None else self._exit_layer
        targeted = (
            row_lengths is not None and len(row_lengths) == inps.shape[0] and self._max_continuation is not None
        )
        positions = self._scored_positions(inps, row_lengths) if targeted else None
        if self._lens_parity is None:
            self._lens_parity = check_parity(
                self._readout, inps, positions if positions is not None else self._scored_positions(inps, None))
        if self._ablation is None and layer == num_layers and not targeted:
            return super()._model_call(inps)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if self._ablation is not None:
                last = torch.tensor(row_lengths, device=inps.device) - 1 if targeted else None
                stack.enter_context(ablate(self.model, self._ablation, last, modules=self._falsedemo_modules))
            if layer == num_layers and not targeted:
                return super()._model_call(inps)
            stack.enter_context(torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ))
            logits = self._readout.layer_logits(inps, layer, positions)
        self._readout.require_finite(logits, f"{self._alias}'s logits at layer {layer}")
        if targeted:
            self.scored_columns = positions.shape[1]
        return logits

    def _scored_positions(self, inps, row_lengths) -> torch.Tensor:
        """[B, W]: each row's last W = ``max continuation length`` input positions (right-aligned to its own
        length; clamped at 0 for a row shorter than W, whose clamped columns HFLM never reads)."""
        width = min(self._max_continuation or 1, inps.shape[1])
        if row_lengths is None or len(row_lengths) != inps.shape[0]:
            row_lengths = [inps.shape[1]] * inps.shape[0]
        lengths = torch.tensor(row_lengths)
        return (lengths[:, None] - width + torch.arange(width)).clamp(min=0)

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if self._exit_layer is not None and self._exit_layer < self._falsedemo_modules.num_layers:
            raise FalseDemoError(
                f"generate_until is not supported with exit_layer={self._exit_layer} < "
                f"{self._falsedemo_modules.num_layers}; use loglikelihood tasks"
            )
        if self._ablation is None:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        with ablate(self.model, self._ablation, modules=self._falsedemo_modules):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    # ---- first-label-token scoring -------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        plan = [
            (request.task_name, request.doc_id)
            if self._label_scoring == "first" and str(request.task_name or "").startswith(TASK_PREFIX)
            else None
            for request in requests
        ]
        self._scoring_plan = plan if any(plan) else None
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._scoring_plan = None

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        plan, self._scoring_plan = self._scoring_plan, None
        if plan is not None and len(plan) == len(requests):
            requests = self._first_token_requests(requests, plan)
        self._max_continuation = max((len(continuation) for _, _, continuation in requests), default=None)
        try:
            # HFLM right-pads without a mask; the ablation's "last" row is each row's own last token
            with compat.right_padding_recorded(lambda lengths: setattr(self, "_row_lengths", lengths)):
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._max_continuation = None

    def _first_token_requests(self, requests, plan):
        first_tokens: dict = {}
        truncated = []
        for request, doc in zip(requests, plan):
            key, context_enc, continuation_enc = request
            if doc is None:
                truncated.append(request)
                continue
            # After a chat header ending in a newline, lm-eval's continuation starts with that newline (the
            # same token for every label): it joins the context and the label's own first token is scored.
            index = label_token_index(self.tokenizer, key[0], continuation_enc)
            first = continuation_enc[index]
            seen = first_tokens.setdefault(doc, {})
            if first in seen and seen[first] != key[1]:
                raise FalseDemoError(
                    f"task {doc[0]} doc {doc[1]}: choices {seen[first]!r} and {key[1]!r} share their first token "
                    f"{first}; first-token scoring cannot tell them apart (use label_scoring=full or other label words)"
                )
            seen[first] = key[1]
            truncated.append((key, list(context_enc) + list(continuation_enc[:index]), continuation_enc[index:index + 1]))
        return truncated

    # ---- results ---------------------------------------------------------------------------------------
    def get_model_info(self) -> dict:
        info = super().get_model_info()
        modules = self._falsedemo_modules
        falsedemo = {
            "model": self._alias,
            "requested": self._requested,
            "architecture": modules.model_type,
            "num_layers": modules.num_layers,
            "num_heads": modules.num_heads,
            "exit_layer": modules.num_layers if self._exit_layer is None else self._exit_layer,
            "label_scoring": self._label_scoring,
            "ablation": self._ablation.describe() if self._ablation is not None else None,
            "path_overrides": self._path_overrides,
            "lens": self._readout.describe(),
            "lens_parity": self._lens_parity,
            "pretrained": self._pretrained_name,
            "resolved_pretrained": str(self.pretrained) if isinstance(self.pretrained, str) else None,
            "model_identity": embedded_models.model_identity(self.pretrained)
            if isinstance(self.pretrained, str)
            else None,
        }
        info["falsedemo"] = falsedemo
        # simple_evaluate merges this dict into results["config"]: the canonical args replace the raw ones.
        info["model_args"] = canonical_model_args(self._given_args, self._exit_layer)
        return info


class EarlyExitHFLM(_FalseDemoHFLM):
    """``hf-earlyexit``: read the logits out after block ``exit_layer`` (ablations may be added)."""

    _alias = "hf-earlyexit"

    def _check_required(self, exit_layer, ablating):
        if exit_layer is None:
            raise FalseDemoError("hf-earlyexit needs exit_layer= (0..L, negative counts from the end: -1 is L)")


class AblatedHFLM(_FalseDemoHFLM):
    """``hf-ablate``: zero heads, attention or MLP blocks (``exit_layer`` may be added)."""

    _alias = "hf-ablate"

    def _check_required(self, exit_layer, ablating):
        if not ablating:
            raise FalseDemoError("hf-ablate needs heads=, attn_layers= or mlp_layers= (e.g. heads=14:6;16:7)")
