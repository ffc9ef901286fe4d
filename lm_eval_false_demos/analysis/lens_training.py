"""``falsedemo lens train``: fit a tuned lens with the tuned-lens objective on demonstration text.

Objective (Belrose et al.; tuned-lens's ``--loss kl``): for every layer l < L, KL(final || layer l), where
"final" is the model's own next-token distribution (the lens at layer L, equal to the logits: lens_parity.py)
and "layer l" is ``head(norm(h_l + translator_l(h_l)))``, summed over layers, averaged over positions.
Translators start at zero (the logit lens); SGD with Nesterov momentum, weight decay towards the identity
and gradient clipping at 1, as tuned-lens trains them.

Text: demonstrations rendered with their true labels (the prompts' own format) from the datasets' demo
pools only; evaluated queries are never seen (``datasets.load_examples`` keeps the two apart). A held-out
part of the pools measures the full-vocabulary KL per layer before and after training.

Affordability on a CPU: the model forward is paid once per token, but the lens costs L x (d x V) per scored
position and grows with the vocabulary. Two knobs trade fidelity for cost:
  --positions  positions per sequence that enter the loss (random, re-drawn each step): an unbiased
               estimate of the same objective, with more variance; no bias;
  --vocab      tokens of the vocabulary that enter the KL: half the subset are the tokens with the most
               final probability summed over the batch, half a fresh uniform sample of the rest, both
               distributions renormalised over it. This is biased: probability a layer puts outside the subset goes unpenalised
               (the sampled part limits that). For Gemma's 262k vocabulary ``--vocab 8192`` cuts the lens
               cost 32x; the held-out KL is always measured on the full vocabulary, so the cost shows.
Checkpoints (``checkpoint.pt``: translators, optimiser, step; tensors only) are written atomically every
``--checkpoint_every`` steps; rerunning the same command resumes from the last one (with another
``--tokens`` it trains to that budget instead, or stops at once if the checkpoint already reached it).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from pathlib import Path

from lm_eval_false_demos.errors import FalseDemoError

# unnatural is absent: its demonstrations and queries are the same 90 objects, so it has no query-free text.
DEFAULT_DATASETS = ("sst2", "trec", "ag_news", "poem_sentiment", "financial_phrasebank", "rte", "mrpc", "sick")
CHECKPOINT = "checkpoint.pt"
SUMMARY = "training.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="lens_action", metavar="ACTION")
    actions.required = True
    train = actions.add_parser("train", help="fit a tuned lens (tuned-lens layout) on demonstration text")
    train.add_argument("--model_args", "-a", required=True,
                       help="key=value,... as for lm_eval: pretrained= (required), dtype=, revision=, path overrides")
    train.add_argument("--output", "-o", required=True, help="lens folder: config.json + params.pt (tuned-lens layout)")
    train.add_argument("--tokens", type=int, default=200_000, help="token budget: tokens run through the model")
    train.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                       help="comma-separated dataset keys whose demonstration pools give the text")
    train.add_argument("--seq_len", type=int, default=128, help="tokens per training sequence")
    train.add_argument("--batch_size", type=int, default=8, help="sequences per step")
    train.add_argument("--positions", type=int, default=32,
                       help="positions per sequence in the loss (random each step; 0 = all)")
    train.add_argument("--vocab", default="all",
                       help="vocabulary tokens in the KL: all, or a subset size (top tokens + uniform sample)")
    train.add_argument("--lr", type=float, default=1.0, help="learning-rate scale (tuned-lens: lr = scale x (1 - momentum))")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight_decay", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0, help="seeds the data order, positions and vocabulary samples")
    train.add_argument("--held_out_sequences", type=int, default=16,
                       help="sequences kept out of training to measure the per-layer KL")
    train.add_argument("--checkpoint_every", type=int, default=25, help="steps between checkpoints")
    train.add_argument("--device", default=None, help="cpu or cuda:0 (default: cuda if available)")
    train.add_argument("--estimate_only", action="store_true",
                       help="print the cost estimate (one timed probe step) and stop without training")


def parse_model_args(text: str) -> dict:
    args = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FalseDemoError(f"--model_args item {item!r} is not key=value")
        args[key.strip()] = value.strip()
    if "pretrained" not in args:
        raise FalseDemoError("--model_args needs pretrained=<model> (hub id, folder or smollm2-135m / gemma-3-270m)")
    return args


def _check_arguments(args) -> dict:
    settings = {}
    for name in ("tokens", "seq_len", "batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise FalseDemoError(f"--{name}={getattr(args, name)} must be >= 1")
    if args.positions < 0 or args.held_out_sequences < 1:
        raise FalseDemoError("--positions must be >= 0 and --held_out_sequences >= 1")
    if args.vocab != "all":
        try:
            settings["vocab"] = int(args.vocab)
        except ValueError:
            raise FalseDemoError(f"--vocab={args.vocab!r} is not allowed; allowed: all or a positive integer") from None
        if settings["vocab"] < 2:
            raise FalseDemoError(f"--vocab={args.vocab} must be at least 2")
    else:
        settings["vocab"] = None
    from lm_eval_false_demos.core.datasets import get_spec

    settings["datasets"] = [key.strip() for key in args.datasets.split(",") if key.strip()]
    for key in settings["datasets"]:
        get_spec(key)
    if not settings["datasets"]:
        raise FalseDemoError("--datasets is empty; give at least one dataset key")
    return settings


def demonstration_documents(keys, seed: int) -> list[str]:
    """Documents of correctly labelled demonstrations (instruction + demos) from demo pools, minus any query.

    A dataset whose pool is its query set (``unnatural``) contributes nothing; if that leaves no text at all,
    FalseDemoError.
    """
    from lm_eval_false_demos.core.datasets import get_spec, load_examples
    from lm_eval_false_demos.core.prompts import SEPARATOR, render_demo

    rng = random.Random(seed)
    documents = []
    for key in keys:
        spec = get_spec(key)
        pool, queries = load_examples(key)
        evaluated = {query.uid for query in queries} | {query.fields for query in queries}
        pool = [example for example in pool if example.uid not in evaluated and example.fields not in evaluated]
        rng.shuffle(pool)
        words = spec.label_word_list
        for start in range(0, len(pool), 16):
            demos = [render_demo(spec, example, words[example.label]) for example in pool[start:start + 16]]
            documents.append(SEPARATOR.join(([spec.instruction] if spec.instruction else []) + demos))
    if not documents:
        raise FalseDemoError(
            f"--datasets {','.join(keys)}: no demonstration text that is not also an evaluated query "
            "(unnatural's demonstrations are its queries); add another dataset"
        )
    rng.shuffle(documents)
    return documents


def token_windows(tokenizer, documents, seq_len: int) -> list[list[int]]:
    """The documents tokenised into one stream (separated by EOS) and cut into ``seq_len`` windows."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for document in documents:
        stream.extend(tokenizer(document, add_special_tokens=False)["input_ids"] + separator)
    return [stream[start:start + seq_len] for start in range(0, len(stream) - seq_len + 1, seq_len)]


def load_model(model_args: dict, device: str):
    import torch
    import transformers

    from lm_eval_false_demos.core import embedded_models

    pretrained = model_args["pretrained"]
    if embedded_models.is_embedded(pretrained):
        pretrained = embedded_models.resolve_pretrained(pretrained)
    dtype = model_args.get("dtype", "float32")
    if dtype not in ("float32", "float16", "bfloat16", "auto"):
        raise FalseDemoError(f"dtype={dtype!r} is not allowed; allowed: float32, bfloat16, float16, auto")
    kwargs = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if model_args.get("revision"):
        kwargs["revision"] = model_args["revision"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained, revision=kwargs.get("revision"))
    model = transformers.AutoModelForCausalLM.from_pretrained(pretrained, **kwargs).to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer, pretrained


class _Objective:
    """Per-layer KL(final || layer) at sampled positions; the final distribution is the lens at layer L."""

    def __init__(self, model, modules, lens, vocab_subset: int | None):
        self.model, self.modules, self.lens, self.vocab_subset = model, modules, lens, vocab_subset
        self.vocab_size = modules.output_head.weight.shape[0] if hasattr(modules.output_head, "weight") else None

    def residual_rows(self, input_ids, positions):
        from lm_eval_false_demos.core.lens import residuals

        return residuals(self.model, input_ids, None, positions, modules=self.modules)  # [L+1, B, P, d]

    def _subset(self, final_probs, generator):
        """Half the subset: the tokens carrying the most final probability over the batch; half: uniform others."""
        import torch

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
        import torch

        from lm_eval_false_demos.core.lens import lens_label_logits, lens_logits

        num_layers = self.modules.num_layers
        subset = None
        with torch.no_grad():
            if self.vocab_subset and not full_vocab and self.vocab_subset < (self.vocab_size or 0):
                final_full = lens_logits(self.model, rows[num_layers], num_layers, self.modules)
                subset = self._subset(final_full.float().softmax(-1), generator)
                final = final_full[..., subset]
            else:
                final = lens_logits(self.model, rows[num_layers], num_layers, self.modules)
            target = final.float().log_softmax(-1)
            target_p = target.exp()
        losses = []
        for layer in range(num_layers):
            with torch.set_grad_enabled(train):
                hidden = self.lens.translate(rows[layer], layer)
                if subset is not None:
                    logits = lens_label_logits(self.model, hidden, subset, self.modules)
                else:
                    logits = lens_logits(self.model, hidden, layer, self.modules)
                loss = (target_p * (target - logits.float().log_softmax(-1))).sum(-1).mean()
                if train:
                    loss.backward()
            losses.append(float(loss.detach()))
        return losses


def held_out_kl(objective, windows, positions: int, seed: int, batch_size: int, device) -> list[float]:
    """Mean full-vocabulary KL per layer on held-out windows (the same positions every call)."""
    import torch

    totals = None
    batches = 0
    for start in range(0, len(windows), batch_size):
        input_ids = torch.tensor(windows[start:start + batch_size], device=device)
        index = _positions(input_ids.shape, positions, seed + start, device)
        with torch.no_grad():
            losses = objective.layer_losses(objective.residual_rows(input_ids, index), full_vocab=True)
        totals = losses if totals is None else [a + b for a, b in zip(totals, losses)]
        batches += 1
    return [value / batches for value in totals]


def _positions(shape, count: int, seed: int, device):
    import torch

    batch, length = shape
    if count == 0 or count >= length:
        return torch.arange(length, device=device).expand(batch, -1)
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(length, generator=generator)[:count].sort().values for _ in range(batch)]).to(device)


def _save_checkpoint(path: Path, lens, optimizer, step: int, seconds: float, fingerprint: dict) -> None:
    import torch

    from lm_eval_false_demos.core import files as results_io

    buffer = io.BytesIO()
    torch.save({"translators": lens.layer_translators.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "seconds": seconds, "fingerprint": json.dumps(fingerprint, sort_keys=True)}, buffer)
    results_io.write_bytes_atomic(path, buffer.getvalue(), overwrite=True)


def _load_checkpoint(path: Path, fingerprint: dict):
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    stored = json.loads(state.get("fingerprint") or "{}")
    stored.pop("tokens", None)  # the budget may change on resume
    if stored != json.loads(json.dumps(fingerprint)):
        raise FalseDemoError(
            f"{path} was written by a different training setup; resume with the same arguments or remove it"
        )
    return state


def _flops_estimate(model, modules, tokens: int, scored: int, vocab: int) -> tuple[float, float]:
    """(model forward, lens forward+backward) floating-point operations for the whole run."""
    num_params = sum(parameter.numel() for parameter in model.parameters())
    d_model = modules.output_head.weight.shape[1]
    lens = 3 * 2 * scored * modules.num_layers * (d_model * d_model + d_model * vocab)
    return 2.0 * num_params * tokens, float(lens)


def train(args) -> dict:
    import torch
    from tqdm.auto import tqdm

    from lm_eval_false_demos.core import files as results_io
    from lm_eval_false_demos.core.architectures import PATH_OVERRIDES, resolve_modules
    from lm_eval_false_demos.core.digests import sha256_file
    from lm_eval_false_demos.core.tuned_lens import TunedLens

    settings = _check_arguments(args)
    model_args = parse_model_args(args.model_args)
    output = Path(args.output)
    if (output / "params.pt").exists():
        raise FalseDemoError(f"{output} already holds a trained lens (params.pt); choose another --output")
    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)

    model, tokenizer, resolved = load_model(model_args, device)
    overrides = {key: model_args[key] for key in PATH_OVERRIDES if key in model_args}
    modules = resolve_modules(model, **overrides)
    documents = demonstration_documents(settings["datasets"], args.seed)
    windows = token_windows(tokenizer, documents, args.seq_len)
    held_out, training = windows[: args.held_out_sequences], windows[args.held_out_sequences:]
    steps = args.tokens // (args.batch_size * args.seq_len)
    if steps < 1 or not training:
        raise FalseDemoError(
            f"--tokens={args.tokens} is less than one step of {args.batch_size} x {args.seq_len} tokens, "
            f"or the demonstration text ({len(windows)} windows) is too short"
        )
    epochs = steps * args.batch_size / len(training)

    lens = TunedLens.for_model(model, modules.num_layers)
    lens.config["base_model_name_or_path"] = model_args["pretrained"]
    lens.config["base_model_revision"] = model_args.get("revision")
    lens.requires_grad_(True)
    optimizer = torch.optim.SGD(lens.parameters(), lr=args.lr * (1 - args.momentum), momentum=args.momentum,
                                nesterov=True, weight_decay=args.weight_decay)
    objective = _Objective(model, modules, lens, settings["vocab"])

    # --tokens may change on resume (extend or cut the budget; the learning-rate decay follows the new total).
    fingerprint = {key: getattr(args, key) for key in (
        "model_args", "datasets", "seq_len", "batch_size", "positions", "vocab", "lr", "momentum",
        "weight_decay", "seed", "held_out_sequences")}
    checkpoint_path = output / CHECKPOINT
    start_step, spent = 0, 0.0
    if checkpoint_path.exists():
        state = _load_checkpoint(checkpoint_path, fingerprint)
        lens.layer_translators.load_state_dict(state["translators"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, spent = int(state["step"]), float(state["seconds"])
        steps = max(steps, start_step)  # a budget below the checkpoint's keeps what was trained
        print(f"resuming from {checkpoint_path} at step {start_step}/{steps}")
    epochs = steps * args.batch_size / len(training)

    scored = steps * args.batch_size * (args.positions or args.seq_len)
    vocab = settings["vocab"] or objective.vocab_size
    forward_flops, lens_flops = _flops_estimate(model, modules, steps * args.batch_size * args.seq_len, scored, vocab)
    probe = time.perf_counter()
    sample = torch.tensor(training[: args.batch_size], device=device)
    rows = objective.residual_rows(sample, _positions(sample.shape, args.positions, args.seed, device))
    objective.layer_losses(rows, torch.Generator().manual_seed(args.seed), train=True)
    lens.zero_grad(set_to_none=True)
    seconds_per_step = time.perf_counter() - probe
    print(
        f"cost estimate: {steps} steps x {args.batch_size} x {args.seq_len} = {steps * args.batch_size * args.seq_len:,} "
        f"tokens ({epochs:.2f} passes over {len(training)} windows of demonstration text from "
        f"{len(settings['datasets'])} datasets), KL at {scored:,} positions over "
        f"{'all ' if not settings['vocab'] else ''}{vocab:,} vocabulary tokens x {modules.num_layers} layers; "
        f"{(forward_flops + lens_flops) / 1e12:.1f} TFLOP ({lens_flops / max(forward_flops + lens_flops, 1):.0%} "
        f"in the lens); about {seconds_per_step * (steps - start_step) / 60:.1f} minutes at {seconds_per_step:.2f} s/step"
    )

    if args.estimate_only:
        return {"estimate_only": True, "seconds_per_step": seconds_per_step, "steps": steps}
    before = held_out_kl(objective, held_out, args.positions, args.seed, args.batch_size, device)
    order = list(range(len(training)))
    random.Random(args.seed).shuffle(order)
    progress = tqdm(total=steps, initial=start_step, desc="lens train", unit="step")
    started = time.perf_counter()
    last_losses = []
    for step in range(start_step, steps):
        batch = [training[order[(step * args.batch_size + row) % len(order)]] for row in range(args.batch_size)]
        input_ids = torch.tensor(batch, device=device)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        index = _positions(input_ids.shape, args.positions, args.seed * 1_000_003 + step, device)
        # tuned-lens's schedule for SGD: no warm-up, linear decay to zero.
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (1 - args.momentum) * (1 - step / steps)
        last_losses = objective.layer_losses(objective.residual_rows(input_ids, index), generator, train=True)
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update(1)
        progress.set_postfix(kl=f"{sum(last_losses) / len(last_losses):.3f}")
        if (step + 1) % args.checkpoint_every == 0 and step + 1 < steps:
            _save_checkpoint(checkpoint_path, lens, optimizer, step + 1, spent + time.perf_counter() - started,
                             fingerprint)
    progress.close()
    seconds = spent + time.perf_counter() - started
    lens.eval()
    after = held_out_kl(objective, held_out, args.positions, args.seed, args.batch_size, device)
    params = lens.save(output)
    summary = {
        "kind": "falsedemo.lens_training",
        "format_version": 1,
        "model_args": model_args,
        "resolved_pretrained": str(resolved),
        "architecture": modules.model_type,
        "num_layers": modules.num_layers,
        "vocab_size": objective.vocab_size,
        "datasets": settings["datasets"],
        "text": "demonstration pools only (correct labels, the prompts' format); evaluated queries never used",
        "tokens": steps * args.batch_size * args.seq_len,
        "steps": steps,
        "passes_over_text": epochs,
        "scored_positions": scored,
        "settings": {key: getattr(args, key) for key in (
            "seq_len", "batch_size", "positions", "vocab", "lr", "momentum", "weight_decay", "seed",
            "held_out_sequences")},
        "objective": "sum over layers l < L of KL(final || lens_l), final = the model's own distribution",
        "training_seconds": seconds,
        "estimated_tflop": (forward_flops + lens_flops) / 1e12,
        "held_out": {"sequences": len(held_out), "positions_per_sequence": args.positions,
                     "kl_logit_lens": before, "kl_tuned_lens": after},
        "params_sha256": sha256_file(params),
        "date": time.time(),
    }
    results_io.write_json_atomic(output / SUMMARY, summary, overwrite=True)
    if checkpoint_path.exists():
        checkpoint_path.unlink()
    return summary


def run(args: argparse.Namespace) -> int:
    summary = train(args)
    if summary.get("estimate_only"):
        return 0
    before, after = summary["held_out"]["kl_logit_lens"], summary["held_out"]["kl_tuned_lens"]
    print(f"trained on {summary['tokens']:,} tokens in {summary['training_seconds'] / 60:.1f} minutes; "
          f"held-out KL (nats) logit lens -> tuned lens, per layer:")
    print("  " + "  ".join(f"{layer}:{b:.2f}->{a:.2f}" for layer, (b, a) in enumerate(zip(before, after))))
    print(f"mean {sum(before) / len(before):.3f} -> {sum(after) / len(after):.3f}; lens written to {args.output}")
    return 0
