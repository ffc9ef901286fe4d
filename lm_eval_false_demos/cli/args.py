"""Argument checks shared by every ``falsedemo`` subcommand, run before any model or data loads.

Each check turns one bad value into a :class:`FalseDemoError` naming the value and what is allowed, so a
typo costs seconds instead of a finished run: the output folder (not a file, writable, creatable, room for
atomic writes), numeric ranges, the seed list, model-arg typos and a ``pretrained=`` that names nothing.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from lm_eval_false_demos.core.chat import check_has_template
from lm_eval_false_demos.core.embedded_models import EMBEDDED_MODELS, is_embedded
from lm_eval_false_demos.core.files import check_output_folder  # noqa: F401  (the shared check, re-exported for commands)
from lm_eval_false_demos.core.task_names import DEFAULT_SEEDS
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.integrations import compat

# lm-eval adds these to the model's constructor from its own flags; they are never typos.
RUNTIME_MODEL_ARGS = ("batch_size", "max_batch_size", "device")
DEFAULT_SEED_STRING = ",".join(map(str, DEFAULT_SEEDS))  # lm-eval's default --seed, as written
# huggingface_hub's repo-id grammar: at most one "/", name characters only.
_HUB_ID = re.compile(r"^(?:[\w][\w.-]{0,95}/)?[\w][\w.-]{0,95}$")


# ------------------------------------------------------------------------------------------- output


# ------------------------------------------------------------------------------------------ numbers


def check_confidence(value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value < 1.0):
        raise FalseDemoError(f"--confidence={value!r} is not allowed; give a level strictly between 0 and 1 (e.g. 0.95)")
    return float(value)


def check_at_least(value: int, minimum: int, flag: str, meaning: str = "") -> int:
    if value < minimum:
        note = f" ({meaning})" if meaning else ""
        raise FalseDemoError(f"{flag}={value} is not allowed; give an integer >= {minimum}{note}")
    return value


def check_limit(value: float | None, flag: str = "--limit") -> float | None:
    """lm-eval's ``--limit``: a count >= 1 or a fraction in (0, 1); a fractional count is a typo, not a floor."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0 or (value >= 1 and not float(value).is_integer()):
        raise FalseDemoError(
            f"{flag}={value:g} is not allowed; give a number of queries (an integer >= 1) or a fraction in (0, 1)"
        )
    return value


def seed_list(text: str) -> list[int | None]:
    """``--seed`` parsed by lm_eval's own rule (one integer for all four, or python,numpy,torch[,fewshot], None
    leaving one unset). An argparse type, so a bad value is argparse's one line with exit status 2 naming the
    value, not a traceback or the repr of a ``functools.partial``."""
    try:
        return compat.parse_seed_list(DEFAULT_SEED_STRING, str(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {error}; give one integer or python,numpy,torch[,fewshot] (integers or None), "
            f"e.g. {DEFAULT_SEED_STRING}"
        ) from None


# ------------------------------------------------------------------------------------- model args


def check_pretrained(pretrained: Any, key: str = "pretrained", revision: str | None = None) -> None:
    """A ``pretrained=`` value names something loadable: a packaged short name, an existing path, or a hub id.

    A value that does not exist locally is taken for a hub id only when it has a hub id's shape (``name`` or
    ``org/name``, name characters only); anything else (``./x``, ``/abs/x``, ``a/b/c``, ``~/x``) is a missing
    local path. Offline (``HF_HUB_OFFLINE``) a hub id must also be in the local cache.
    """
    if not isinstance(pretrained, str) or pretrained in EMBEDDED_MODELS:
        return
    text = pretrained.strip()
    if Path(text).expanduser().exists():
        return
    known = ", ".join(EMBEDDED_MODELS)
    if not _HUB_ID.fullmatch(text) or ".." in text or text.startswith((".", "~")):
        raise FalseDemoError(
            f"{key}={pretrained!r} does not exist; give an existing model folder, a hub id (org/name) or "
            f"one of {known}"
        )
    if _offline() and not _in_hub_cache(text, revision):
        raise FalseDemoError(
            f"{key}={pretrained!r} is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set; "
            f"download it first, give a model folder, or use one of {known}"
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str, revision: str | None = None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return True
    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def integer_model_arg(model_args: Mapping[str, Any], key: str, minimum: int = 1) -> int | None:
    """An integer model arg (``max_length=``, ...) as an int, or None when absent; anything else is one line."""
    value = model_args.get(key)
    if value is None:
        return None
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < minimum:
        raise FalseDemoError(f"{key}={value!r} is not allowed; give an integer >= {minimum}")
    return number


def check_chat_template(model_args: Mapping[str, Any]) -> None:
    """A tokenizer without a chat template is refused before the model loads: only the tokenizer is read (the
    same cached load the tasks use later)."""
    from lm_eval_false_demos.integrations.tasks import load_tokenizer_and_length

    named = str(model_args.get("pretrained", ""))
    max_length = integer_model_arg(model_args, "max_length")
    tokenizer, _ = load_tokenizer_and_length(
        named, model_args.get("tokenizer"), model_args.get("gguf_file"), model_args.get("revision"),
        str(model_args.get("trust_remote_code", False)).lower() in ("true", "1"),
        int(max_length) if max_length else None,
    )
    check_has_template(tokenizer, named)


def check_model_args(model: str, model_args: Mapping[str, Any], read_by_caller: tuple[str, ...] = (),
                     plain_hf_hint: str | None = None) -> None:
    """Typos of lm-eval's ``hf`` arguments (and ours) fail here instead of deep inside ``from_pretrained``.

    Unknown keys stay allowed: HFLM forwards them to ``from_pretrained`` (``attn_implementation``, ...).
    Only a key one or two letters away from a known one is refused. ``read_by_caller``: keys the command
    itself reads (the sweep's ``lens=`` and module paths), allowed with every model. ``plain_hf_hint``: what to
    say instead of "use hf-earlyexit or hf-ablate" where the command always loads the plain hf model.
    """
    if model not in ("hf", "hf-earlyexit", "hf-ablate", "huggingface"):
        return
    from lm_eval_false_demos.integrations.models import OWN_ARGS, check_dtype, hflm_arg_names

    known = set(hflm_arg_names()) | (set(OWN_ARGS) if model != "hf" and model != "huggingface" else set())
    for key in model_args:
        if key in known or key in RUNTIME_MODEL_ARGS or key in read_by_caller:
            continue
        if model in ("hf", "huggingface") and key in OWN_ARGS:
            raise FalseDemoError(
                f"model arg {key}= {plain_hf_hint}" if plain_hf_hint else
                f"model arg {key}= needs --model hf-earlyexit or hf-ablate; the plain hf model would pass it to "
                "from_pretrained"
            )
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
        if close:
            raise FalseDemoError(f"unknown model arg {key}={model_args[key]!r}; did you mean {close[0]}=?")
    check_dtype(model_args.get("dtype"))
    integer_model_arg(model_args, "max_length")
    # Without pretrained= the model's own default loads: lm-eval's hf takes gpt2, ours the packaged Gemma.
    default = "gpt2" if model in ("hf", "huggingface") else "gemma-3-270m"
    revision = model_args.get("revision")
    check_pretrained(model_args.get("pretrained", default), revision=revision if isinstance(revision, str) else None)
    check_tensor_parallel(model_args)


def _text_config_on_disk(model_args: Mapping[str, Any]):
    """The model's text config from its config file alone, when that is on disk; else None (the packaged short
    names are checked once converted, right after the load)."""
    import transformers

    if is_embedded(model_args.get("pretrained")):
        return None
    try:
        return transformers.AutoConfig.from_pretrained(
            model_args["pretrained"], revision=model_args.get("revision"), local_files_only=True,
            trust_remote_code=str(model_args.get("trust_remote_code", "")).lower() in ("1", "true", "yes"),
        ).get_text_config()
    except Exception:  # noqa: BLE001 - an unreadable config is the load's to report, with its own message
        return None


def model_shape_from_config(model_args: Mapping[str, Any]) -> tuple[int, int] | None:
    """(blocks, heads per block) from the model's config file alone, when that is on disk; else None."""
    config = _text_config_on_disk(model_args)
    try:
        return (int(config.num_hidden_layers), int(config.num_attention_heads)) if config is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def check_tensor_parallel(model_args: Mapping[str, Any]) -> None:
    """``tp_plan=`` combinations that cannot work, in one line before the model loads (lm-eval would stop with
    a traceback after reading the config)."""
    if model_args.get("tp_plan") in (None, ""):
        return
    if str(model_args.get("parallelize", "")).lower() in ("1", "true", "yes"):
        raise FalseDemoError("tp_plan= and parallelize=True both split the model; give one (tp_plan=auto under "
                             "torchrun: processes compute together; parallelize=True: one process, layers on devices)")
    processes = launched_world_size()
    config = _text_config_on_disk(model_args)
    kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
    if isinstance(kv_heads, int) and kv_heads % processes:
        divisors = [n for n in range(1, kv_heads + 1) if kv_heads % n == 0]
        raise FalseDemoError(
            f"tp_plan= on {processes} processes needs the model's num_key_value_heads ({kv_heads}) to divide by "
            f"{processes}; launch {', '.join(map(str, divisors))} processes (--nproc_per_node)")


def check_top_k(top_k: int, num_layers: int, num_heads: int, evaluate: bool) -> None:
    """``top_k`` against the model: a random control drawn from every head would be the top set itself."""
    total = num_layers * num_heads
    allowed = total - 1 if evaluate else total
    if top_k > allowed:
        why = " (the random control needs heads outside the top set)" if evaluate else ""
        raise FalseDemoError(
            f"--top_k={top_k} is more than this model's {num_layers} x {num_heads} = {total} heads allow; "
            f"give 1..{allowed}{why}"
        )


# ------------------------------------------------------------------------------------------ resume


# Arguments that say where and how to show a run, not what it computes: a resumed run may change them.
PRESENTATION_ARGUMENTS = frozenset({"output_path", "resume", "no_plots", "no_progress", "checkpoint_seconds",
                                    "command", "_module"})


def wrong_share_grid(text: str) -> list[float]:
    """``--wrong_share 0,25,50,75,100``: distinct percents in 0..100. An argparse type, so a bad value is
    argparse's one line with exit status 2 naming it."""
    from lm_eval_false_demos.core.corruption import check_wrong_share

    allowed = "give distinct percents in 0..100 separated by commas, e.g. 0,25,50,75,100"
    try:
        shares = [check_wrong_share(part.strip() or None) for part in str(text).split(",")]
    except FalseDemoError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}; {allowed}") from None
    if None in shares or len(set(shares)) != len(shares):
        raise argparse.ArgumentTypeError(f"{text!r}: {allowed}")
    return shares


# Options added after runs were checkpointed: left out while unused, so a run started before them still resumes.
LATER_OPTIONS = frozenset({"wrong_share"})


def run_arguments(args: argparse.Namespace) -> dict:
    """The parsed arguments that change what a run computes (a resumed run must repeat them)."""
    return {key: value for key, value in sorted(vars(args).items())
            if key not in PRESENTATION_ARGUMENTS and not (key in LATER_OPTIONS and value is None)}


# ------------------------------------------------------------------------------- accelerate ranks


def launched_world_size() -> int:
    """Processes started by ``accelerate launch`` / torchrun (their WORLD_SIZE), known before any model loads."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank under ``accelerate launch`` / torchrun (their RANK; 0 alone), known before any model
    loads: the one writer of a run is rank 0."""
    try:
        return max(0, int(os.environ.get("RANK", "0")))
    except ValueError:
        return 0
