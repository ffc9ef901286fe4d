"""Chat-template renderings of a paired prompt (lm-eval's ``--apply_chat_template [--fewshot_as_multiturn]``).

Messages follow lm-eval's ``ConfigurableTask.fewshot_context``: the system message is ``--system_instruction``
and the dataset's instruction line joined by the few-shot delimiter; each demonstration is a user turn (its
text up to the label) and an assistant turn (the label word shown); the query is a user turn whose
assistant turn is left open (the template's generation prompt). Single-turn collapses the turns into one
user message as lm-eval's ``multiturn_to_singleturn`` does: ``question + " " + label + "\\n\\n"`` per
demonstration, then the query. The format's tail after the label (the "." of ``Answer: {label}.``) belongs to
the raw text only: in a chat the label word is the whole answer, as it is for the query.

Pairing carries over: the messages come from one :class:`~lm_eval_false_demos.core.prompts.Prompt`, so the
settings of a query show the same texts in the same order and differ only in label words.

Where the template has no system role (lm-eval's HFLM then silently drops the system message), the system
text opens the first user message instead, so the instruction is never lost.

Readout offsets: demo i's label word is located where the template put it, right after the assistant
header (in a multi-turn chat) or after the space inside the one user message (single-turn). Its readout
offset is where the label's first token starts: the separating space when the word follows a space (byte
BPE and SentencePiece merge a space into the following word), else the word itself (a header ending in a
newline stays its own token). The token ending at that offset is the demo's readout position, as in the raw
prompt, where the offset is the space of `` {label}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lm_eval_false_demos.errors import FalseDemoError

MODES = ("raw", "chat_single", "chat_multiturn")
DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter, which our tasks use


def prompt_mode(apply_chat_template, fewshot_as_multiturn) -> str:
    """``raw``, ``chat_single`` or ``chat_multiturn``: what results record (keys ``prompt_mode``)."""
    if not apply_chat_template:
        return "raw"
    return "chat_multiturn" if fewshot_as_multiturn else "chat_single"


def template_sha256(template: str | None) -> str | None:
    return hashlib.sha256(template.encode("utf-8")).hexdigest() if template else None


def check_has_template(tokenizer, model_name: str) -> str:
    """The tokenizer's chat template; a tokenizer without one is bad input naming the model."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise FalseDemoError(
            f"model {model_name!r}: its tokenizer has no chat template, so --apply_chat_template cannot be used; "
            "drop --apply_chat_template (raw few-shot text) or use an instruct model that ships a template"
        )
    return template if isinstance(template, str) else repr(sorted(template.items()))


@dataclass(frozen=True)
class Rendering:
    context: str  # the whole templated text, ending with the open assistant turn
    mode: str
    demo_label_starts: tuple[int, ...]  # char offset of demo i's label word
    demo_readout_offsets: tuple[int, ...]  # char offset where demo i's first label token starts (see above)
    system_role: bool  # the system text went to a system message (False: it opens the first user message)

    def label_lead(self, demo: int) -> str:
        """What the label's first token carries before the word: " " or ""."""
        return self.context[self.demo_readout_offsets[demo]:self.demo_label_starts[demo]]


def _join(prefix: str | None, suffix: str | None) -> str:
    """lm-eval's ``maybe_delimit`` with the few-shot delimiter."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + DELIMITER + suffix


def system_text(prompt, system_instruction: str | None) -> str:
    return _join(system_instruction, prompt.instruction)


def messages(prompt, multiturn: bool, system: str, system_role: bool = True) -> list[dict]:
    """The chat as lm-eval builds it for these demonstrations and query."""
    if multiturn:
        turns = []
        for question, word in zip(prompt.demo_questions, prompt.demo_label_words):
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": word}]
        turns.append({"role": "user", "content": prompt.query_text})
    else:
        body = "".join(f"{question} {word}{DELIMITER}"
                       for question, word in zip(prompt.demo_questions, prompt.demo_label_words))
        turns = [{"role": "user", "content": body + prompt.query_text}]
    if system and system_role:
        return [{"role": "system", "content": system}] + turns
    if system:
        turns[0] = {"role": "user", "content": _join(system, turns[0]["content"])}
    return turns


def render(prompt, template: Callable[[list[dict]], str], multiturn: bool,
           system_instruction: str | None = None) -> Rendering:
    """Render ``prompt`` with ``template`` (messages -> text with the generation prompt) and locate its labels."""
    if len(prompt.demo_questions) != len(prompt.demo_readout_offsets):
        raise ValueError("prompt lacks its demonstration pieces (built by an older prompts.build_prompt?)")
    system = system_text(prompt, system_instruction)
    system_role = True
    text = template(messages(prompt, multiturn, system))
    if system and system not in text:  # the template (or lm-eval's fallback) dropped the system message
        system_role = False
        text = template(messages(prompt, multiturn, system, system_role=False))
    cursor = text.find(system) + len(system) if system and system_role else 0
    starts = (_locate_multiturn if multiturn else _locate_single)(text, prompt, cursor, system, system_role)
    readouts = tuple(start - 1 if start > 0 and text[start - 1] == " " else start for start in starts)
    return Rendering(
        context=text, mode="chat_multiturn" if multiturn else "chat_single", demo_label_starts=tuple(starts),
        demo_readout_offsets=readouts, system_role=system_role,
    )


def _not_found(what: str, text: str, cursor: int) -> FalseDemoError:
    return FalseDemoError(
        f"chat template output does not contain {what} after character {cursor} "
        f"(the template changes message text); rendered: {text[cursor:cursor + 200]!r}"
    )


def _locate_multiturn(text: str, prompt, cursor: int, system: str, system_role: bool) -> list[int]:
    turns = [turn["content"] for turn in messages(prompt, True, system, system_role) if turn["role"] != "system"]
    users, query = turns[0:-1:2], turns[-1]
    query_at = text.rfind(query)
    if query_at < cursor:
        raise _not_found(f"the query {query!r}", text, cursor)
    # Between a user turn and its answer sits the assistant header, which the generation prompt ends with.
    header = text[query_at + len(query):]
    starts = []
    for index, (content, word) in enumerate(zip(users, prompt.demo_label_words)):
        found = text.find(content, cursor)
        if found < 0:
            raise _not_found(f"demonstration {index}'s question {content!r}", text, cursor)
        end = found + len(content)
        start = end + len(header)
        if not (text.startswith(header, end) and text.startswith(word, start)):
            start = text.find(word, end)
            if start < 0:
                raise _not_found(f"demonstration {index}'s label {word!r}", text, end)
        starts.append(start)
        cursor = start + len(word)
    return starts


def _locate_single(text: str, prompt, cursor: int, system: str, system_role: bool) -> list[int]:
    content = messages(prompt, False, system, system_role)[-1]["content"]
    found = text.find(content, cursor)
    if found < 0:
        raise _not_found("the user message", text, cursor)
    body = messages(prompt, False, "")[-1]["content"]
    position = found + len(content) - len(body)  # past the system text opening the message, if it does
    starts = []
    for question, word in zip(prompt.demo_questions, prompt.demo_label_words):
        starts.append(position + len(question) + 1)
        position += len(question) + 1 + len(word) + len(DELIMITER)
    return starts


def label_token_index(tokenizer, context: str, continuation_ids: Sequence[int]) -> int:
    """Index of the label's first token in lm-eval's continuation tokens.

    lm-eval moves the context's trailing whitespace into the continuation (``_encode_pair``): after an
    assistant header ending in a newline the continuation is ``"\\n" + label`` and its first token is the
    newline, the same for every label. The label's first token is the first one that decodes to more
    than whitespace (a space merged into the word, as in raw prompts, is index 0).
    """
    if context == context.rstrip() or not continuation_ids:
        return 0
    for index in range(len(continuation_ids)):
        if tokenizer.decode(list(continuation_ids[:index + 1])).strip():
            return index
    return 0


@dataclass(frozen=True)
class ChatOptions:
    """``--apply_chat_template`` with ``--fewshot_as_multiturn`` / ``--system_instruction``, for tools that
    render prompts themselves (``falsedemo heads``) with a tokenizer's template, as lm-eval's HFLM does."""

    multiturn: bool = True
    system_instruction: str | None = None

    @property
    def mode(self) -> str:
        return prompt_mode(True, self.multiturn)


def tokenizer_template(tokenizer) -> Callable[[list[dict]], str]:
    """Messages -> text as lm-eval's ``HFLM.apply_chat_template`` renders them (generation prompt added; a
    template rejecting the system role gets the chat without it, which :func:`render` then handles)."""
    import jinja2

    def apply(chat_history: list[dict]) -> str:
        try:
            return tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=True)
        except jinja2.exceptions.TemplateError:
            chat_history = [message for message in chat_history if message["role"] != "system"]
            return tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=True)

    return apply
