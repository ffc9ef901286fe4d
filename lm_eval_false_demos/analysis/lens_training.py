"""Fitting a tuned lens with the tuned-lens objective on demonstration text (``falsedemo lens train``).

Objective (Belrose et al.; tuned-lens's ``--loss kl``): for every layer l < L, KL(final || layer l), where
"final" is the model's own next-token distribution (the lens at layer L, equal to the logits: lens_parity.py)
and "layer l" is ``head(norm(h_l + translator_l(h_l)))``, summed over layers, averaged over positions.
Translators start at zero (the logit lens); SGD with Nesterov momentum, weight decay towards the identity
and gradient clipping at 1, as tuned-lens trains them.

Text and settings: :mod:`analysis.lens_text` (demonstration pools only, never an evaluated query; a held-out
part measures the full-vocabulary KL per layer before and after training).

Affordability on a CPU: the model forward is paid once per token, but the lens costs L x (d x V) per scored
position and grows with the vocabulary. Two settings trade fidelity for cost:
  positions  positions per sequence that enter the loss (random, re-drawn each step): an unbiased
             estimate of the same objective, with more variance; no bias;
  vocab      tokens of the vocabulary that enter the KL: half the subset are the tokens with the most
             final probability summed over the batch, half a fresh uniform sample of the rest, both
             distributions renormalised over it. This is biased: probability a layer puts outside the subset
             goes unpenalised (the sampled part limits that). For Gemma's 262k vocabulary ``vocab=8192`` cuts
             the lens cost 32x; the held-out KL is always measured on the full vocabulary, so the cost shows.

Pure computation: the model, tokenizer and modules come from the caller (``cli/lens.py`` loads them through
lm-eval's registry), the settings a :class:`~lens_text.TrainingSettings`; the checkpoint and lens files are the
caller's (``results/lens_files.py``), reached through the ``on_checkpoint`` callback of :meth:`LensTrainer.fit`.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from lm_eval_false_demos.analysis.lens_text import TrainingSettings, TrainingText
from lm_eval_false_demos.core.devices import input_device
from lm_eval_false_demos.core.lens import Readout
from lm_eval_false_demos.core.tuned_lens import TunedLens

# ------------------------------------------------------------------------------------- objective


class _Objective:
    """Per-layer KL(final || layer) at sampled positions; the final distribution is the lens at layer L."""

    def __init__(self, model, modules, lens, vocab_subset: int | None):
        self.model, self.modules, self.lens, self.vocab_subset = model, modules, lens, vocab_subset
        self.vocab_size = modules.output_head.weight.shape[0] if hasattr(modules.output_head, "weight") else None

    @functools.cached_property
    def readout(self) -> Readout:
        """The frozen model read through its own unembedding; the lens is trained on the translated rows."""
        return Readout(self.model, self.modules)

    @property
    def unembed(self):
        return self.readout.unembed

    def residual_rows(self, input_ids, positions):
        return self.readout.residuals(input_ids, None, positions)[0]  # [L+1, B, P, d] on the head's device

    def _subset(self, final_probs, generator):
        """Half the subset: the tokens carrying the most final probability over the batch; half: uniform others."""
        size = min(self.vocab_subset, self.vocab_size)
        mass = final_probs.reshape(-1, final_probs.shape[-1]).sum(0)
        chosen = torch.topk(mass, k=max(1, size // 2)).indices
        mask = torch.ones(self.vocab_size, dtype=torch.bool, device=mass.device)
        mask[chosen] = False
        rest = mask.nonzero().squeeze(-1)
        extra = rest[torch.randperm(rest.numel(), generator=generator)[: size - chosen.numel()].to(rest.device)]
        return torch.cat([chosen, extra])

    def layer_losses(self, rows, generator=None, train: bool = False, full_vocab: bool = False) -> list[float]:
        """KL per layer 0..L-1 (nats); with ``train`` each layer's loss is back-propagated as it is computed."""
        num_layers = self.modules.num_layers
        subset = None
        with torch.no_grad():
            if self.vocab_subset and not full_vocab and self.vocab_subset < (self.vocab_size or 0):
                final_full = self.unembed.logits(rows[num_layers])
                subset = self._subset(final_full.float().softmax(-1), generator)
                final = final_full[..., subset]
            else:
                final = self.unembed.logits(rows[num_layers])
            target = final.float().log_softmax(-1)
            target_p = target.exp()
        losses = []
        for layer in range(num_layers):
            with torch.set_grad_enabled(train):
                hidden = self.lens.translate(rows[layer], layer)
                if subset is not None:
                    logits = self.unembed.label_logits(hidden, subset)
                else:
                    logits = self.unembed.logits(hidden)
                loss = (target_p * (target - logits.float().log_softmax(-1))).sum(-1).mean()
                if train:
                    loss.backward()
            losses.append(float(loss.detach()))
        return losses


def _positions(shape, count: int, seed: int, device):
    batch, length = shape
    if count == 0 or count >= length:
        return torch.arange(length, device=device).expand(batch, -1)
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(length, generator=generator)[:count].sort().values for _ in range(batch)]).to(device)


def flops_estimate(model, modules, tokens: int, scored: int, vocab: int) -> tuple[float, float]:
    """(model forward, lens forward+backward) floating-point operations for the whole run."""
    num_params = sum(parameter.numel() for parameter in model.parameters())
    d_model = modules.output_head.weight.shape[1]
    lens = 3 * 2 * scored * modules.num_layers * (d_model * d_model + d_model * vocab)
    return 2.0 * num_params * tokens, float(lens)


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    """What a run of ``steps`` costs, timed by one probe step (``remaining_steps`` after a resume)."""

    steps: int
    remaining_steps: int
    tokens: int
    passes_over_text: float
    scored_positions: int
    vocab: int
    full_vocab: bool
    forward_flops: float
    lens_flops: float
    seconds_per_step: float

    @property
    def tflop(self) -> float:
        return (self.forward_flops + self.lens_flops) / 1e12

    @property
    def lens_share(self) -> float:
        return self.lens_flops / max(self.forward_flops + self.lens_flops, 1)

    @property
    def minutes(self) -> float:
        return self.seconds_per_step * self.remaining_steps / 60


# --------------------------------------------------------------------------------------- training


class LensTrainer:
    """One tuned lens (zero translators: the logit lens), its optimiser and objective for a frozen model.

    ``step`` and ``seconds`` count the training done so far (restored by :meth:`load_state_dict`)."""

    def __init__(self, model, modules, settings: TrainingSettings):
        torch.manual_seed(settings.seed)
        self.model, self.modules, self.settings = model, modules, settings
        # Translators live where the readout computes: the execution device of the model's head (also when
        # accelerate offloads the model); input ids go to its first device.
        self.lens = TunedLens.for_model(model, modules.num_layers)
        self.device = input_device(model)
        self.lens.requires_grad_(True)
        self.optimizer = torch.optim.SGD(self.lens.parameters(), lr=settings.lr * (1 - settings.momentum),
                                         momentum=settings.momentum, nesterov=True,
                                         weight_decay=settings.weight_decay)
        self.objective = _Objective(model, modules, self.lens, settings.vocab)
        self.step, self.seconds = 0, 0.0

    @property
    def vocab_size(self) -> int | None:
        return self.objective.vocab_size

    def state_dict(self) -> dict:
        return {"translators": self.lens.layer_translators.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "seconds": self.seconds}

    def load_state_dict(self, state: Mapping) -> None:
        self.lens.layer_translators.load_state_dict(state["translators"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])

    def estimate(self, text: TrainingText, steps: int, done: int = 0) -> CostEstimate:
        """The cost of ``steps`` steps (``done`` of them already trained), with one timed probe step on the first
        training batch (no update)."""
        settings = self.settings
        scored = steps * settings.batch_size * (settings.positions or settings.seq_len)
        vocab = settings.vocab or self.vocab_size
        tokens = steps * settings.batch_size * settings.seq_len
        forward_flops, lens_flops = flops_estimate(self.model, self.modules, tokens, scored, vocab)
        probe = time.perf_counter()
        sample = torch.tensor(text.training[: settings.batch_size], device=self.device)
        rows = self.objective.residual_rows(sample, _positions(sample.shape, settings.positions, settings.seed,
                                                               self.device))
        self.objective.layer_losses(rows, torch.Generator().manual_seed(settings.seed), train=True)
        self.lens.zero_grad(set_to_none=True)
        return CostEstimate(
            steps=steps, remaining_steps=steps - done, tokens=tokens,
            passes_over_text=steps * settings.batch_size / len(text.training), scored_positions=scored,
            vocab=vocab, full_vocab=not settings.vocab, forward_flops=forward_flops, lens_flops=lens_flops,
            seconds_per_step=time.perf_counter() - probe,
        )

    def held_out_kl(self, windows: Sequence[Sequence[int]]) -> list[float]:
        """Mean full-vocabulary KL per layer on held-out windows (the same positions every call)."""
        settings = self.settings
        totals = None
        batches = 0
        for start in range(0, len(windows), settings.batch_size):
            input_ids = torch.tensor(windows[start:start + settings.batch_size], device=self.device)
            index = _positions(input_ids.shape, settings.positions, settings.seed + start, self.device)
            with torch.no_grad():
                losses = self.objective.layer_losses(self.objective.residual_rows(input_ids, index), full_vocab=True)
            totals = losses if totals is None else [a + b for a, b in zip(totals, losses)]
            batches += 1
        return [value / batches for value in totals]

    def fit(self, training: Sequence[Sequence[int]], steps: int,
            on_step: Callable[[int, list[float]], None] | None = None,
            on_checkpoint: Callable[["LensTrainer"], None] | None = None) -> list[float]:
        """Train from ``self.step`` to ``steps``; the last step's per-layer losses.

        ``on_step(step, losses)`` follows every step; ``on_checkpoint(self)`` every ``checkpoint_every`` steps
        before the last (``self.state_dict()`` is then the state to resume from)."""
        settings = self.settings
        order = list(range(len(training)))
        random.Random(settings.seed).shuffle(order)
        spent, started = self.seconds, time.perf_counter()
        last_losses: list[float] = []
        for step in range(self.step, steps):
            batch = [training[order[(step * settings.batch_size + row) % len(order)]]
                     for row in range(settings.batch_size)]
            input_ids = torch.tensor(batch, device=self.device)
            generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
            index = _positions(input_ids.shape, settings.positions, settings.seed * 1_000_003 + step, self.device)
            # tuned-lens's schedule for SGD: no warm-up, linear decay to zero.
            for group in self.optimizer.param_groups:
                group["lr"] = settings.lr * (1 - settings.momentum) * (1 - step / steps)
            last_losses = self.objective.layer_losses(self.objective.residual_rows(input_ids, index), generator,
                                                      train=True)
            torch.nn.utils.clip_grad_norm_(self.lens.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step, self.seconds = step + 1, spent + time.perf_counter() - started
            if on_step is not None:
                on_step(step, last_losses)
            if on_checkpoint is not None and (step + 1) % settings.checkpoint_every == 0 and step + 1 < steps:
                on_checkpoint(self)
        self.seconds = spent + time.perf_counter() - started
        self.lens.eval()
        return last_losses
