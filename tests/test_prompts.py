"""Paired prompt building: exact format, pairing across settings, determinism, budget, bad input."""

import random

import pytest
from tiny_models import tiny_tokenizer

from lm_eval_false_demos.core.datasets import Example, get_spec
from lm_eval_false_demos.core.data_loading import load_examples
from lm_eval_false_demos.errors import FalseDemoError
from lm_eval_false_demos.core.prompts import (
    SEPARATOR, build_prompt, follow_target, label_token_ids, query_shift, render_demo,
)

CORRUPTING = ("correct", "permuted", "half", "random")


def _strip_labels(prompt):
    """Context with every demo's label word cut out, for comparing settings."""
    text, last = [], 0
    for offset in prompt.demo_readout_offsets:
        text.append(prompt.context[last:offset])
        last = prompt.context.index(".\n\n", offset)
    text.append(prompt.context[last:])
    return "|".join(text)


def test_exact_format_with_instruction_demos_and_query():
    spec = get_spec("unnatural")
    pool = [Example("p:0", ("kale",), 0), Example("p:1", ("golf",), 1), Example("p:2", ("wolf",), 2)]
    query = Example("q:0", ("lion",), 2)
    prompt = build_prompt(spec, query, pool, 3, "correct", 7)
    blocks = prompt.context.split(SEPARATOR)
    assert blocks[0] == spec.instruction
    assert sorted(blocks[1:4]) == ["golf: sport.", "kale: plant/vegetable.", "wolf: animal."]
    assert blocks[4] == "lion:"
    for offset, label in zip(prompt.demo_readout_offsets, prompt.demo_shown_labels):
        assert prompt.context[offset:].startswith(" " + spec.label_word_list[label] + ".")


def test_two_text_format_and_query_cut_before_label():
    spec = get_spec("mrpc")
    demo = Example("d", ("A cat sat", "A cat was sitting"), 1)
    assert render_demo(spec, demo, "True") == \
        "A cat sat.\nquestion: A cat was sitting. True or False?\nThe answer is: True."
    prompt = build_prompt(spec, Example("q", ("x", "y"), 0), [demo] * 1 + [Example("e", ("u", "v"), 0)], 2,
                          "correct", 0)
    assert prompt.context.endswith("x.\nquestion: y. True or False?\nThe answer is:")


@pytest.mark.parametrize("key", ["unnatural", "trec", "sst2"])
def test_settings_are_paired_and_differ_only_in_labels(key):
    spec = get_spec(key)
    pool, queries = load_examples(key)
    for query in queries[:15]:
        prompts = {s: build_prompt(spec, query, pool, 16, s, 1234) for s in CORRUPTING}
        correct = prompts["correct"]
        assert list(correct.demo_shown_labels) == list(correct.demo_true_labels)
        for setting, prompt in prompts.items():
            assert prompt.demo_uids == correct.demo_uids
            assert prompt.demo_true_labels == correct.demo_true_labels
            assert _strip_labels(prompt) == _strip_labels(correct)
            assert prompt.shift == correct.shift == query_shift(spec, query.uid, 1234)
            assert prompt.follow_label == follow_target(spec, query, 1234) != query.label
        permuted = prompts["permuted"]
        assert all(shown == (true + permuted.shift) % spec.num_classes
                   for true, shown in zip(permuted.demo_true_labels, permuted.demo_shown_labels))


def test_query_is_never_its_own_demonstration_and_no_repeats():
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    for query in queries:
        prompt = build_prompt(spec, query, pool, 24, "permuted", 1234)
        assert query.uid not in prompt.demo_uids
        assert len(set(prompt.demo_uids)) == 24
        assert prompt.context.count(f"\n\n{query.fields[0]}:") == 1  # only as the query


def test_deterministic_and_independent_of_query_order():
    spec = get_spec("ag_news")
    pool, queries = load_examples("ag_news")
    forward = [build_prompt(spec, q, pool, 8, "half", 99).context for q in queries[:20]]
    shuffled = list(enumerate(queries[:20]))
    random.Random(0).shuffle(shuffled)
    backward = {i: build_prompt(spec, q, pool, 8, "half", 99).context for i, q in shuffled}
    assert forward == [backward[i] for i in range(20)]
    other_seed = [build_prompt(spec, q, pool, 8, "half", 100).context for q in queries[:20]]
    assert other_seed != forward


def test_classes_are_drawn_about_uniformly():
    spec = get_spec("trec")  # DESC is rare in the pool (86 of 5452) but drawn as often as the others
    pool, queries = load_examples("trec")
    counts = [0] * spec.num_classes
    for query in queries[:100]:
        for label in build_prompt(spec, query, pool, 30, "correct", 5).demo_true_labels:
            counts[label] += 1
    expected = 3000 / 6
    assert all(abs(count - expected) < 5 * (3000 * (1 / 6) * (5 / 6)) ** 0.5 for count in counts)


def test_zeroshot_prompt_is_instruction_and_query():
    spec = get_spec("ethos")
    pool, queries = load_examples("ethos")
    prompt = build_prompt(spec, queries[0], pool, 0, "zeroshot", 1)
    assert prompt.context == spec.instruction + SEPARATOR + "Text: " + queries[0].fields[0] + "\nAnswer:"
    with pytest.raises(FalseDemoError, match="zeroshot"):
        build_prompt(spec, queries[0], pool, 4, "zeroshot", 1)


def test_unknown_setting():
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    with pytest.raises(FalseDemoError, match="unknown setting 'flipped'; allowed: correct, permuted"):
        build_prompt(spec, queries[0], pool, 4, "flipped", 1)


def test_class_with_too_few_demonstrations():
    spec = get_spec("sst2")
    pool = [Example(f"n{i}", ("bad",), 0) for i in range(30)] + [Example("p0", ("good",), 1)]
    with pytest.raises(FalseDemoError, match=r"class 'positive' has only 1 demonstrations.*ceil\(k/K\) = 5.*k=10"):
        build_prompt(spec, Example("q", ("meh",), 0), pool, 10, "correct", 0)


def test_k_larger_than_pool():
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    with pytest.raises(FalseDemoError, match=r"k=90 .* only 89 .*query excluded.*k <= 89"):
        build_prompt(spec, queries[0], pool, 90, "correct", 0)


def test_unnatural_allows_more_than_a_class_when_classes_run_out():
    spec = get_spec("unnatural")
    pool, queries = load_examples("unnatural")
    prompt = build_prompt(spec, queries[0], pool, 80, "correct", 0)
    assert len(set(prompt.demo_uids)) == 80


def _char_counter(text):
    return len(text)


def test_token_budget_draws_shorter_demos_for_every_setting_alike():
    spec = get_spec("ag_news")
    pool, queries = load_examples("ag_news")
    query = queries[0]
    free = build_prompt(spec, query, pool, 8, "correct", 3)
    budget = len(free.context) * 2 // 3
    for setting in CORRUPTING:
        prompt = build_prompt(spec, query, pool, 8, setting, 3, token_counter=_char_counter, max_tokens=budget)
        assert len(prompt.context) <= budget
        assert len(prompt.demo_uids) == 8
        assert prompt.demo_uids == build_prompt(spec, query, pool, 8, "correct", 3, token_counter=_char_counter,
                                                max_tokens=budget).demo_uids
    roomy = build_prompt(spec, query, pool, 8, "permuted", 3, token_counter=_char_counter, max_tokens=10**6)
    assert roomy.demo_uids == free.demo_uids  # a budget that is never hit does not change the demos


def test_token_budget_fails_clearly_when_k_demos_cannot_fit():
    spec = get_spec("ag_news")
    pool, queries = load_examples("ag_news")
    with pytest.raises(FalseDemoError, match=r"cannot fit k=40 demonstrations in max_tokens=600"):
        build_prompt(spec, queries[0], pool, 40, "correct", 3, token_counter=_char_counter, max_tokens=600)
    # A budget the query alone overflows: no "at most -1 tokens long" demonstrations.
    with pytest.raises(FalseDemoError, match=r"alone take \d+ of max_tokens=20 tokens, leaving no room for k=8") as raised:
        build_prompt(spec, queries[0], pool, 8, "correct", 3, token_counter=_char_counter, max_tokens=20)
    assert "-1" not in str(raised.value)


def test_label_token_ids_first_tokens_and_collisions():
    tokenizer = tiny_tokenizer()
    ids = label_token_ids(tokenizer, ["Negative", "Neutral", "Positive"])
    assert ids == [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ["Negative", "Neutral",
                                                                                          "Positive"]]
    assert len(set(ids)) == 3
    with pytest.raises(FalseDemoError, match=r"'Positive' and 'Positively' share their first token"):
        label_token_ids(tokenizer, ["Positive", "Positively"])
