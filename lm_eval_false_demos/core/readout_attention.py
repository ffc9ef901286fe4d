"""An attention implementation that runs sdpa and also returns the LAST query row's attention weights.

Head scoring needs, per layer, only the readout token's attention row [H, S]. Eager attention returns the
weights but materialises every [H, S, S] matrix in Python-level ops and is several times slower than sdpa on
CPU; sdpa is fast but returns no weights. This implementation, registered in transformers'
``AttentionInterface`` (with sdpa's mask builder in ``AttentionMaskInterface``), keeps sdpa for the output
and recomputes the one row it needs from the query, keys and mask the model already passed in: O(H * S * d)
per layer, so the pass costs about what a plain sdpa forward does.

The attention module returns its implementation's second output as its weights, so a forward hook on the
module sees ``weights[:, :, -1, :]`` exactly where eager attention would put the full matrix.

sdpa cannot soft-cap attention logits (Gemma-2); for such configs ``weights_capturing_attention`` falls
back to eager attention, which returns every row.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lm_eval_false_demos.errors import FalseDemoError

IMPLEMENTATION = "falsedemo_readout_sdpa"


def last_row_attention(query, key, attention_mask, scaling) -> torch.Tensor:
    """Post-softmax attention of the last query position, [B, H, 1, S], in float32.

    ``query`` [B, H, T, d] and ``key`` [B, H_kv, S, d] as attention implementations receive them (positions
    and norms applied); ``attention_mask`` is sdpa's: None (causal, so the last row sees every key), a
    boolean "may attend" mask or an additive float mask, [B or 1, 1 or H, T, S].
    """
    if key.shape[1] == 0 or query.shape[1] % key.shape[1]:
        raise FalseDemoError(f"{query.shape[1]} query heads do not share {key.shape[1]} key heads evenly")
    keys = repeat_kv(key, query.shape[1] // key.shape[1]).to(torch.float32)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (query[:, :, -1:, :].to(torch.float32) @ keys.transpose(-1, -2)) * scale
    if attention_mask is not None:
        row = attention_mask[:, :, -1:, : keys.shape[-2]]
        if row.dtype == torch.bool:
            scores = scores.masked_fill(~row, float("-inf"))
        else:
            scores = scores + row.to(torch.float32)
    return torch.softmax(scores, dim=-1)


def sdpa_with_readout_row(module, query, key, value, attention_mask, scaling=None, **kwargs):
    if kwargs.get("position_bias") is not None:
        raise FalseDemoError(f"{type(module).__name__} adds a position bias, which the readout row does not model")
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    return output, last_row_attention(query, key, attention_mask, scaling)


AttentionInterface.register(IMPLEMENTATION, sdpa_with_readout_row)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def soft_caps_attention(config) -> bool:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "attn_logit_softcapping", None) is not None


@contextlib.contextmanager
def weights_capturing_attention(model, eager: bool = False):
    """Run ``model`` with an attention implementation whose modules return weights (at least the last row),
    then restore the implementation it had. ``eager`` forces the full-matrix reference implementation."""
    current = getattr(model.config, "_attn_implementation", None)
    wanted = "eager" if eager or soft_caps_attention(model.config) else IMPLEMENTATION
    switch = current != wanted
    if switch:
        model.set_attn_implementation(wanted)
    try:
        yield wanted
    finally:
        if switch:
            model.set_attn_implementation(current)
