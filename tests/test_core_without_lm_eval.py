"""The core (data, prompts, chat rendering, corruption, metrics, lens, interventions, head scoring) works without lm-eval:
the lm-eval wrappers are thin adapters over it, not the other way round."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).parent

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["lm_eval"] = None  # any import of lm_eval now raises ImportError
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import torch
    from tiny_models import build_tiny_model
    from lm_eval_false_demos.analysis import head_evaluation, head_scores
    from lm_eval_false_demos.results import heads_files
    from lm_eval_false_demos.core import metrics
    from lm_eval_false_demos.core.datasets import get_spec
    from lm_eval_false_demos.core.data_loading import load_examples
    from lm_eval_false_demos.core.ablation_specs import make_ablation
    from lm_eval_false_demos.core.interventions import ablate
    from lm_eval_false_demos.core.lens import read_label_logits
    from lm_eval_false_demos.core.lens_parity import check_parity
    from lm_eval_false_demos.analysis.lens_text import demonstration_documents
    from lm_eval_false_demos.core.prompts import build_prompt, label_token_ids
    from lm_eval_false_demos.core.tuned_lens import TunedLens

    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    model, tokenizer = build_tiny_model("llama")
    ids = label_token_ids(tokenizer, spec.label_word_list)
    prompts = [build_prompt(spec, query, pool, 6, "permuted", seed=1234) for query in queries[:6]]
    rows = []
    for prompt in prompts:
        tokens = torch.tensor([tokenizer(prompt.context)["input_ids"]])
        plain = read_label_logits(model, tokens, [-1], ids)[-1, 0, 0]
        with ablate(model, make_ablation(model, heads="3:1;2:0")):
            ablated = read_label_logits(model, tokens, [-1], ids)[-1, 0, 0]
        assert not torch.allclose(plain, ablated)
        rows.append(torch.softmax(plain, -1).numpy())
    accuracy = metrics.calibrated_accuracy(np.stack(rows), [p.query_label for p in prompts])
    assert check_parity(model, tokens, [-1])["max_abs_diff"] < 1e-4
    lens = TunedLens.for_model(model, 4)
    assert torch.equal(read_label_logits(model, tokens, [-1], ids, translator=lens), read_label_logits(model, tokens, [-1], ids))
    assert demonstration_documents(["sst2"], 0)
    assert 0.0 <= accuracy <= 1.0
    from lm_eval_false_demos.analysis.head_prompts import encode_context
    from lm_eval_false_demos.analysis.records import PromptRecord

    words = spec.label_word_list
    items = []
    for index, p in enumerate(prompts):
        record = PromptRecord.from_prompt(p, task="t", doc_id=index, query_key=str(index),
                                          continuations=[" " + word for word in words])
        items.append(head_scores.scoring_item(record, *encode_context(tokenizer, p.context), words, ids))
    scores = head_scores.score_heads(model, items)
    assert scores.prefix_matching.shape == (6, 4, 4)
    from lm_eval_false_demos.core import chat
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\\n{% endfor %}<assistant>"
    rendering = chat.render(prompts[0], chat.tokenizer_template(tokenizer), multiturn=True)
    assert rendering.context.endswith(prompts[0].query_text + "\\n<assistant>")
    assert "lm_eval" not in {name.split(".")[0] for name, mod in sys.modules.items() if mod is not None}
    print("core ok")
    """
)


def test_core_runs_with_lm_eval_unimportable():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "core ok" in out.stdout
