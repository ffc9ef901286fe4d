"""Tiny random decoder models, one per supported architecture, built from configs in code.

Every test model shares one byte-level BPE tokenizer trained in memory on the
prompt vocabulary (label words, demo formats), so any text encodes and label
words have short, distinct first tokens. Models are saved with
``save_pretrained`` so they load through the same ``from_pretrained`` path that
users (and lm-eval's ``hf`` model) take.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import transformers

HIDDEN = 64
LAYERS = 4
HEADS = 4
VOCAB = 600

# Architectures whose per-module lookup the project supports; each entry builds a config.
ARCHITECTURES = (
    "gpt2",
    "gptj",
    "gpt_neox",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "olmo",
    "olmo2",
    "opt",
    "phi",
    "phi3",
)

_CORPUS_WORDS = (
    "Review Answer Text Sentiment Tweet Question Article The answer is question True or False "
    "Negative Positive negative positive no impact Neutral yes no neither favor against not equivalent "
    "Not sure World Sports Business Science Description Entity Abbreviation Person Number Location "
    "Company School Artist Athlete Politician Transportation Building Nature Village Animal Plant Album "
    "Film Book plant vegetable sport animal A B Consider the categories Classify each object in its "
    "category onions broccoli hockey golf horse sheep lion tiger tennis kale beet corn Is the following "
    "hate speech Determine if text supports atheism feminism two questions are Classify questions based "
    "on whether their type documents about"
)


def _config(arch: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return transformers.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=1024, **common)
    if arch == "gptj":
        return transformers.GPTJConfig(
            n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=1024, rotary_dim=8, **common
        )
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=4 * HIDDEN, max_position_embeddings=1024, rotary_pct=0.25, **common
        )
    if arch in ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "phi3"):
        # qwen3 and olmo2 add q/k norms (olmo2 also norms each sublayer's output), olmo's norms have no
        # weights, phi3 fuses q/k/v and gate/up: the differences the module lookup must survive.
        config_class = {
            "llama": transformers.LlamaConfig,
            "mistral": transformers.MistralConfig,
            "qwen2": transformers.Qwen2Config,
            "qwen3": transformers.Qwen3Config,
            "olmo": transformers.OlmoConfig,
            "olmo2": transformers.Olmo2Config,
            "phi3": transformers.Phi3Config,
        }[arch]
        extra = dict(head_dim=16) if arch == "qwen3" else {}  # its default (128) would dwarf the model
        return config_class(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=2,
            intermediate_size=2 * HIDDEN, max_position_embeddings=1024, tie_word_embeddings=False, **extra, **common
        )
    if arch in ("gemma", "gemma2", "gemma3"):
        config_class = {
            "gemma": transformers.GemmaConfig,
            "gemma2": transformers.Gemma2Config,
            "gemma3": transformers.Gemma3TextConfig,
        }[arch]
        extra = {}
        if arch != "gemma":
            # Soft-capping and sliding windows are what make these architectures differ.
            extra = dict(final_logit_softcapping=30.0, sliding_window=64, query_pre_attn_scalar=16)
        return config_class(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=1,
            head_dim=16, intermediate_size=2 * HIDDEN, max_position_embeddings=1024, **extra, **common
        )
    if arch == "opt":
        return transformers.OPTConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=4 * HIDDEN,
            word_embed_proj_dim=HIDDEN, max_position_embeddings=1024, **common
        )
    if arch == "phi":
        return transformers.PhiConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=4 * HIDDEN, max_position_embeddings=1024, partial_rotary_factor=0.5, **common
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [_CORPUS_WORDS, _CORPUS_WORDS.lower()] * 20
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def build_tiny_model(arch: str, seed: int = 0) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerFast]:
    """A randomly initialised float32 model of ``arch`` in eval mode, and the shared tokenizer."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = _config(arch, len(tokenizer))
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        # Random-init biases and norm gains are zeros and ones; perturb them so that
        # identities involving biases and norms are actually exercised.
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.float().eval(), tokenizer


def save_tiny_model(arch: str, directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny ``arch`` model and tokenizer to ``directory`` (loadable with ``pretrained=``)."""
    directory = Path(directory)
    model, tokenizer = build_tiny_model(arch, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def random_tuned_lens(model, num_layers: int, seed: int = 0, scale: float = 0.05):
    """A tuned lens for ``model`` with small random translators (zero translators are the logit lens)."""
    from lm_eval_false_demos.core.tuned_lens import TunedLens

    lens = TunedLens.for_model(model, num_layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lens.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return lens


def save_tuned_lens(lens, folder, model_name: str = "tiny") -> Path:
    """What tuned-lens's ``TunedLens.save`` writes: its config dataclass as JSON and the translators' state dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "base_model_name_or_path": model_name, "d_model": lens.config["d_model"],
        "num_hidden_layers": lens.num_layers, "bias": True, "base_model_revision": None,
        "unembed_hash": "0" * 64, "lens_type": "linear_tuned_lens",
    }
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(lens.layer_translators.state_dict(), folder / "params.pt")
    return folder
