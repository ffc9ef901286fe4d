"""Where the parts the logit lens and the ablations touch live, per decoder architecture.

Transformers has no generic accessor for the final norm, the per-layer attention output projection or the
MLP, so each supported ``config.model_type`` gets an explicit entry. Unknown architectures fail loudly
(naming the supported ones) unless the caller points at the modules by path (``layers_path=`` ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lm_eval_false_demos.errors import FalseDemoError

# How the query/key/value projections are stored, for the paper's q/k/v head ablation:
#   "separate": three modules (q_proj, k_proj, v_proj);
#   "concat":   one module whose output is [Q (all heads) | K (all kv heads) | V (all kv heads)] (GPT-2, Phi-3);
#   "per_head": one module whose output is, per head, [q_h | k_h | v_h] (GPT-NeoX).
QKV_LAYOUTS = ("separate", "concat", "per_head")


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """Module paths: ``layers``/``final_norm``/``pre_head`` from the model root, the rest from one block."""

    layers: str
    final_norm: str | None
    attention: str
    attn_out_proj: str
    mlp: str
    qkv_layout: str
    qkv: tuple[str, ...]  # ("q","k","v") module paths for "separate", one path otherwise
    pre_head: str | None = None  # applied between the final norm and the head (OPT's project_out)
    # A norm applied to the attention output before the residual add (Gemma 2/3, OLMo 2). The same name in
    # Llama-style blocks is the pre-MLP norm, so only the table can say which one a block has.
    attn_post_norm: str | None = None


_LLAMA_LIKE = ArchitectureSpec(
    layers="model.layers",
    final_norm="model.norm",
    attention="self_attn",
    attn_out_proj="self_attn.o_proj",
    mlp="mlp",
    qkv_layout="separate",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
)

_POST_NORMED = dataclasses.replace(_LLAMA_LIKE, attn_post_norm="post_attention_layernorm")

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "gpt2": ArchitectureSpec(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention="attn",
        attn_out_proj="attn.c_proj",
        mlp="mlp",
        qkv_layout="concat",
        qkv=("attn.c_attn",),
    ),
    "gptj": ArchitectureSpec(
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention="attn",
        attn_out_proj="attn.out_proj",
        mlp="mlp",
        qkv_layout="separate",
        qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"),
    ),
    "gpt_neox": ArchitectureSpec(
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        attention="attention",
        attn_out_proj="attention.dense",
        mlp="mlp",
        qkv_layout="per_head",
        qkv=("attention.query_key_value",),
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _POST_NORMED,
    "gemma3_text": _POST_NORMED,
    "olmo": _LLAMA_LIKE,
    "olmo2": _POST_NORMED,
    "phi": dataclasses.replace(_LLAMA_LIKE, final_norm="model.final_layernorm", attn_out_proj="self_attn.dense"),
    "phi3": dataclasses.replace(_LLAMA_LIKE, qkv_layout="concat", qkv=("self_attn.qkv_proj",)),
    "opt": ArchitectureSpec(
        layers="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        attention="self_attn",
        attn_out_proj="self_attn.out_proj",
        # OPT has no MLP module; fc2's output (bias included) is the MLP's whole write to the residual.
        mlp="fc2",
        qkv_layout="separate",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        pre_head="model.decoder.project_out",
    ),
}

PATH_OVERRIDES = ("layers_path", "norm_path", "head_path", "attn_path", "attn_out_path", "mlp_path")


@dataclasses.dataclass
class ModelModules:
    """The resolved modules of one model; layer ``i`` lists index block ``i``."""

    model_type: str
    blocks: list[torch.nn.Module]
    final_norm: torch.nn.Module | None
    pre_head: torch.nn.Module | None
    output_head: torch.nn.Module
    softcap: float | None
    attention: list[torch.nn.Module | None]
    attn_out_proj: list[torch.nn.Module | None]
    mlp: list[torch.nn.Module | None]
    attn_post_norm: list[torch.nn.Module | None]
    num_heads: int
    head_dim: int
    num_kv_heads: int
    qkv_layout: str | None
    qkv: list[tuple[torch.nn.Module, ...]] | None
    paths: dict[str, Any]

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def require(self, kind: str) -> None:
        """Fail clearly when an intervention needs a module the override paths did not name."""
        modules = {"attention": self.attention, "attn_out_proj": self.attn_out_proj, "mlp": self.mlp}[kind]
        if any(module is None for module in modules):
            override = {"attention": "attn_path", "attn_out_proj": "attn_out_path", "mlp": "mlp_path"}[kind]
            raise FalseDemoError(
                f"no {kind} module known for model type {self.model_type!r}; pass {override}=<path inside a block>"
            )


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def get_submodule(root: torch.nn.Module, path: str, what: str) -> torch.nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise FalseDemoError(f"{what} path {path!r} does not name a module of {type(root).__name__}") from None


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _model_type(model) -> str:
    return getattr(_text_config(model), "model_type", None) or getattr(model.config, "model_type", "unknown")


def _head_geometry(config) -> tuple[int, int, int]:
    num_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not num_heads:
        raise FalseDemoError(f"cannot find the number of attention heads in {type(config).__name__}")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // num_heads if hidden else None)
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    return int(num_heads), int(head_dim) if head_dim else 0, int(num_kv_heads)


def _in_features(module: torch.nn.Module) -> int | None:
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    # GPT-2's Conv1D stores its weight as (in, out).
    if type(module).__name__ == "Conv1D" and weight is not None:
        return weight.shape[0]
    return getattr(module, "in_features", None)


def resolve_modules(model: torch.nn.Module, **path_overrides: str | None) -> ModelModules:
    """Locate blocks, final norm, output head (+ soft-cap) and the per-layer attention / MLP modules.

    ``path_overrides`` (any of ``PATH_OVERRIDES``) replace the table's entries; for architectures not in
    the table ``layers_path`` is required. ``norm_path="none"`` declares a model without a final norm.
    The result is cached on the model per override set, so repeated calls are free.
    """
    unknown = set(path_overrides) - set(PATH_OVERRIDES)
    if unknown:
        raise FalseDemoError(f"unknown path override(s) {sorted(unknown)}; allowed: {', '.join(PATH_OVERRIDES)}")
    overrides = {key: value for key, value in path_overrides.items() if value not in (None, "")}
    cache_key = tuple(sorted(overrides.items()))
    cache = model.__dict__.setdefault("_falsedemo_modules", {})
    if cache_key in cache:
        return cache[cache_key]

    model_type = _model_type(model)
    spec = ARCHITECTURES.get(model_type)
    if spec is None and "layers_path" not in overrides:
        raise FalseDemoError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); supported: "
            f"{', '.join(supported_architectures())}. For another decoder, point at its modules with "
            "layers_path=, norm_path=, head_path= (and attn_out_path=, attn_path=, mlp_path= for ablations)"
        )

    layers_path = overrides.get("layers_path", spec.layers if spec else None)
    blocks = list(get_submodule(model, layers_path, "layers"))
    if not blocks:
        raise FalseDemoError(f"layers path {layers_path!r} holds no blocks")

    norm_path = overrides.get("norm_path", spec.final_norm if spec else None)
    if norm_path is None and spec is None:
        raise FalseDemoError("norm_path= is required with layers_path= (use norm_path=none for no final norm)")
    final_norm = None if norm_path in (None, "none") else get_submodule(model, norm_path, "norm")

    pre_head = None
    if spec is not None and spec.pre_head and "norm_path" not in overrides:
        try:
            pre_head = model.get_submodule(spec.pre_head)
        except AttributeError:
            pre_head = None

    if "head_path" in overrides:
        output_head = get_submodule(model, overrides["head_path"], "head")
    else:
        output_head = model.get_output_embeddings()
        if output_head is None:
            raise FalseDemoError(f"{type(model).__name__} has no output embeddings; pass head_path=")

    softcap = getattr(_text_config(model), "final_logit_softcapping", None) or None

    def per_block(relative: str | None, what: str) -> list[torch.nn.Module | None]:
        if relative is None:
            return [None] * len(blocks)
        return [get_submodule(block, relative, what) for block in blocks]

    attention = per_block(overrides.get("attn_path", spec.attention if spec else None), "attn")
    attn_out_proj = per_block(overrides.get("attn_out_path", spec.attn_out_proj if spec else None), "attn_out")
    mlp = per_block(overrides.get("mlp_path", spec.mlp if spec else None), "mlp")
    attn_post_norm = per_block(spec.attn_post_norm if spec and "layers_path" not in overrides else None, "attn_post_norm")

    qkv_layout = spec.qkv_layout if spec and not {"layers_path", "attn_path"} & set(overrides) else None
    qkv = [tuple(get_submodule(block, path, "qkv") for path in spec.qkv) for block in blocks] if qkv_layout else None

    num_heads, head_dim, num_kv_heads = _head_geometry(_text_config(model))
    width = _in_features(attn_out_proj[0]) if attn_out_proj[0] is not None else None
    if width is not None:
        if not head_dim or num_heads * head_dim != width:
            if width % num_heads:
                raise FalseDemoError(
                    f"attention output projection takes {width} features, not divisible by {num_heads} heads"
                )
            head_dim = width // num_heads

    resolved = ModelModules(
        model_type=model_type,
        blocks=blocks,
        final_norm=final_norm,
        pre_head=pre_head,
        output_head=output_head,
        softcap=float(softcap) if softcap else None,
        attention=attention,
        attn_out_proj=attn_out_proj,
        mlp=mlp,
        attn_post_norm=attn_post_norm,
        num_heads=num_heads,
        head_dim=head_dim,
        num_kv_heads=num_kv_heads,
        qkv_layout=qkv_layout,
        qkv=qkv,
        paths={"layers": layers_path, "norm": norm_path, **overrides},
    )
    cache[cache_key] = resolved
    return resolved
