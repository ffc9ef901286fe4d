"""The sweep's forward passes: label-token logits at every lens layer (0..L) and every readout position of
every prompt, one forward per prompt, batched by similar length (:func:`core.lens.read_label_logits`)."""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from lm_eval_false_demos.analysis.records import EncodedPrompt
from lm_eval_false_demos.core.interventions import ablate
from lm_eval_false_demos.core.lens import Readout
from lm_eval_false_demos.core.lens_parity import check_parity, read_label_logits_checked


def _ablation_context(ablation, readout: Readout, attention_mask):
    """An ``hf-ablate`` model's ablation around our own forward pass (our hooks call the model directly)."""
    if ablation is None or ablation.is_empty:
        return contextlib.nullcontext()
    return ablate(readout.model, ablation, attention_mask=attention_mask, modules=readout.modules)


def read_prompts(readout: Readout, encoded: Sequence[EncodedPrompt], batch_size: int, *, pad_id: int,
                 ablation=None, progress=None, parity: dict | None = None, chunks=None
                 ) -> dict[int, np.ndarray]:
    """{index: label logits [L+1, P, K] float32} from one forward per prompt, batched by similar length.

    ``readout`` (:class:`core.lens.Readout`) is the model with its lens and devices. ``ablation`` (an
    ``interventions.Ablation``) is applied around each forward; ``pad_id`` pads the batch. Label logits that
    are not finite stop the run (one line naming the dtype). With ``parity`` (a dict, filled in) the first batch is
    read with the lens parity check (:func:`core.lens_parity.read_label_logits_checked`): its forward runs on to
    the model's own logits at the scored positions, so the check costs no forward of its own.

    Sequences are right-padded: in a causal model padding after a position cannot change it, so every readout
    equals the unpadded one. Prompts with different K or readout counts never share a batch. With ``chunks``
    (:class:`checkpoints.PromptChunks`) a batch an earlier attempt finished is taken from it, and each new
    batch is handed to it; the batches are the same either way, so the numbers are too.
    """
    device = readout.input_device
    groups: dict[tuple[int, int], list[EncodedPrompt]] = {}
    for prompt in encoded:
        key = (len(prompt.label_token_ids), len(prompt.demo_label_token_ids), len(prompt.positions))
        groups.setdefault(key, []).append(prompt)
    outputs: dict[int, np.ndarray] = {}
    for group in groups.values():
        group = sorted(group, key=lambda prompt: len(prompt.input_ids), reverse=True)
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            stored = chunks is not None and all(prompt.index in chunks.done for prompt in batch)
            check = parity is not None and not parity
            if stored and not check:
                outputs.update({prompt.index: chunks.done[prompt.index] for prompt in batch})
                if progress is not None:
                    progress.update(len(batch))
                continue
            width = max(len(prompt.input_ids) for prompt in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, prompt in enumerate(batch):
                input_ids[row, : len(prompt.input_ids)] = torch.tensor(prompt.input_ids)
                attention_mask[row, : len(prompt.input_ids)] = 1
            positions = torch.tensor([prompt.positions for prompt in batch], dtype=torch.long)
            label_ids = torch.tensor([prompt.label_token_ids + prompt.demo_label_token_ids for prompt in batch],
                                     dtype=torch.long)
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            if stored:
                if check:  # the first batch of the plan even when stored: a resumed run checks the same prompts
                    parity.update(check_parity(readout, input_ids, positions.to(device), attention_mask))
                outputs.update({prompt.index: chunks.done[prompt.index] for prompt in batch})
                if progress is not None:
                    progress.update(len(batch))
                continue
            with _ablation_context(ablation, readout, attention_mask):
                if check:
                    logits, record = read_label_logits_checked(readout, input_ids, positions, label_ids,
                                                               attention_mask=attention_mask)
                    parity.update(record)
                else:
                    logits = readout.read_label_logits(input_ids, positions, label_ids,
                                                       attention_mask=attention_mask)  # [L+1, B, P, K]
            logits = readout.require_finite(logits, "the label logits").cpu().numpy()
            for row, prompt in enumerate(batch):
                outputs[prompt.index] = _labels_by_position(logits[:, row], prompt)
            if chunks is not None:
                chunks.record({prompt.index: outputs[prompt.index] for prompt in batch})
            if progress is not None:
                progress.update(len(batch))
    return outputs


def _labels_by_position(logits: np.ndarray, prompt: EncodedPrompt) -> np.ndarray:
    """[L+1, P, K] from logits read for the query's K ids and, if they differ, the demos' K ids after them."""
    num_labels = len(prompt.label_token_ids)
    if not prompt.demo_label_token_ids:
        return logits
    selected = logits[:, :, num_labels:].copy()
    selected[:, -1] = logits[:, -1, :num_labels]
    return selected
