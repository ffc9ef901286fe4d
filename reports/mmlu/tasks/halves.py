"""process_docs of the local MMLU tasks: one subject, and one of two halves of its questions chosen by a seeded
hash of the question and its choices (the same half wherever and in whatever order the rows are read)."""

import functools
import hashlib
import json


def half_of(doc) -> str:
    text = json.dumps([doc["question"], doc["choices"]], ensure_ascii=False)
    return "select" if hashlib.sha256(("mmlu-halves\x1f" + text).encode()).digest()[0] % 2 == 0 else "report"


def subject_half(dataset, subject: str, half: str):
    return dataset.filter(lambda doc: doc["subject"] == subject and half_of(doc) == half)


def __getattr__(name: str):
    """select_<subject> / report_<subject>: the process_docs of mmlu_<half>_<subject>."""
    half, _, subject = name.partition("_")
    if half in ("select", "report") and subject:
        return functools.partial(subject_half, subject=subject, half=half)
    raise AttributeError(name)
