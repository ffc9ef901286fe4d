"""The benchmark's datasets (paper spec section 2): one table, and loading from the hub or a local copy.

Every dataset yields two deterministic lists of :class:`Example`: a demonstration pool and a query set,
taken from different splits so a query can never be shown as a demonstration of itself. Splits were
chosen so that both the hub and the local copies in ``../shared/data`` have labels for them:

=========================== ================== ====================== ==================================
key                         demo pool          queries                why
=========================== ================== ====================== ==================================
sst2, sst2_ab               train              validation             hub test is unlabelled
poem_sentiment              train              test                   class 3 (mixed) dropped everywhere
financial_phrasebank        train (half)       train (other half)     single split: seeded partition
ethos                       train (half)       train (other half)     single split: seeded partition
tweet_eval_*                train              test
medical_questions_pairs     train (half)       train (other half)     single split: seeded partition
mrpc, rte                   train              validation             GLUE test is unlabelled on the hub
sick                        train              test
ag_news, trec, dbpedia_14   train              test
unnatural                   all 90 objects     all 90 objects         built in; ``prompts.build_prompt``
                                                                      never shows a query as its own demo
=========================== ================== ====================== ==================================

Single-split partitions shuffle row indices with ``PARTITION_SEED`` and give the first half to the
demo pool. Queries are put in a fixed seeded order too (``PARTITION_SEED``), so ``--limit N`` takes a
random subset with all classes rather than the file's first rows (some files are sorted by class).

Labels are mapped to our class order by class *name*: hub ``ClassLabel`` names (checked against the
documented names) or, for local copies, the documented hub names of the label ids. Rows of classes we do
not use (poem_sentiment's "mixed") are dropped; an unlabelled row (-1) is an error.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from lm_eval_false_demos.errors import FalseDemoError

DATA_DIR_ENV = "FALSEDEMO_DATA_DIR"
PARTITION_SEED = 20240507
QUERY_SHARE_SINGLE_SPLIT = 0.5


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    hub_path: str | None
    hub_config: str | None
    text_columns: tuple[str, ...]
    label_column: str
    class_names: tuple[str, ...]
    label_words: dict[str, str] = field(hash=False)
    demo_format: str
    instruction: str | None
    hub_label_names: tuple[str, ...]
    demo_split: str
    query_split: str
    main: bool = True
    data_key: str | None = None  # local folder name when the data is another key's (sst2_ab reads sst2)

    @property
    def local_folder_name(self) -> str:
        return self.data_key or self.key

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_word_list(self) -> list[str]:
        return [self.label_words[name] for name in self.class_names]

    @property
    def single_split(self) -> bool:
        return self.demo_split == self.query_split

    @property
    def format_fields(self) -> tuple[str, ...]:
        return ("text",) if len(self.text_columns) == 1 else ("text1", "text2")


@dataclass(frozen=True)
class Example:
    uid: str
    fields: tuple[str, ...]
    label: int


_PAIR_FORMAT = "{text1}.\nquestion: {text2}. True or False?\nThe answer is: {label}."
_STANCE_WORDS = {"none": "neither", "against": "no", "favor": "yes"}
_TREC_WORDS = {
    "DESC": "Description", "ENTY": "Entity", "ABBR": "Abbreviation", "HUM": "Person", "NUM": "Number",
    "LOC": "Location",
}
_DBPEDIA_WORDS = {
    "Company": "Company", "EducationalInstitution": "School", "Artist": "Artist", "Athlete": "Athlete",
    "OfficeHolder": "Politician", "MeanOfTransportation": "Transportation", "Building": "Building",
    "NaturalPlace": "Nature", "Village": "Village", "Animal": "Animal", "Plant": "Plant", "Album": "Album",
    "Film": "Film", "WrittenWork": "Book",
}


def _spec(key, hub_path, hub_config, text_columns, label_column, words, demo_format, instruction,
          hub_label_names, demo_split, query_split, main=True, data_key=None):
    return DatasetSpec(
        key=key, hub_path=hub_path, hub_config=hub_config, text_columns=tuple(text_columns),
        label_column=label_column, class_names=tuple(words), label_words=dict(words),
        demo_format=demo_format, instruction=instruction, hub_label_names=tuple(hub_label_names),
        demo_split=demo_split, query_split=query_split, main=main, data_key=data_key,
    )


def _stance(key, topic):
    return _spec(
        key, "cardiffnlp/tweet_eval", key.removeprefix("tweet_eval_"), ["text"], "label", _STANCE_WORDS,
        "Tweet: {text}\nAnswer: {label}.",
        f"Determine if the text supports {topic}. Answer with yes, no, or neither.",
        ["none", "against", "favor"], "train", "test",
    )


UNNATURAL_OBJECTS = {
    "plant/vegetable": (
        "onions broccoli kale beet corn beans zucchini celery lettuce radish cucumber peas tomato spinach "
        "carrots chard artichoke asparagus cauliflower cabbage endive squash sprout aubergine garlic dill "
        "parsley basil thyme leek"
    ).split(),
    "sport": (
        "hockey golf football luge bowling archery lacrosse badminton billiards volleyball rugby cycling "
        "baseball tennis judo gymnastics marathon climbing triathlon swimming soccer diving shooting boxing "
        "rowing karate skiing snowboarding taekwondo weightlifting"
    ).split(),
    "animal": (
        "horse sheep goldfish duck leopard lion porcupine wolf camel zebra llama cat elephant monkey panda "
        "tiger giraffe deer turtle cheetah sloth rhinoceros crocodile butterfly squirrel spider ant lizard "
        "rabbit fox"
    ).split(),
}

_TABLE = [
    _spec("sst2", "stanfordnlp/sst2", None, ["sentence"], "label",
          {"negative": "Negative", "positive": "Positive"}, "Review: {text}\nAnswer: {label}.", None,
          ["negative", "positive"], "train", "validation"),
    _spec("poem_sentiment", "google-research-datasets/poem_sentiment", None, ["verse_text"], "label",
          {"negative": "negative", "positive": "positive", "no_impact": "no impact"},
          "{text}:\nThe sentiment is: {label}.", None,
          ["negative", "positive", "no_impact", "mixed"], "train", "test"),
    _spec("financial_phrasebank", "takala/financial_phrasebank", "sentences_allagree", ["sentence"], "label",
          {"negative": "Negative", "neutral": "Neutral", "positive": "Positive"},
          "Text: {text}\nSentiment: {label}.", None, ["negative", "neutral", "positive"], "train", "train"),
    _spec("ethos", "iamollas/ethos", "binary", ["text"], "label",
          {"no_hate_speech": "no", "hate_speech": "yes"}, "Text: {text}\nAnswer: {label}.",
          "Is the following hate speech? Answer yes or no.", ["no_hate_speech", "hate_speech"],
          "train", "train"),
    _spec("tweet_eval_hate", "cardiffnlp/tweet_eval", "hate", ["text"], "label",
          {"non-hate": "favor", "hate": "against"}, "Tweet: {text}\nSentiment: {label}.", None,
          ["non-hate", "hate"], "train", "test"),
    _stance("tweet_eval_stance_atheism", "atheism"),
    _stance("tweet_eval_stance_feminist", "feminism"),
    _spec("medical_questions_pairs", "curaihealth/medical_questions_pairs", None, ["question_1", "question_2"],
          "label", {"different": "not", "similar": "equivalent"},
          "Question: {text1}.\nQuestion: {text2}.\nAnswer: {label}.",
          "Determine if the two questions are equivalent or not.", ["different", "similar"], "train", "train"),
    _spec("mrpc", "nyu-mll/glue", "mrpc", ["sentence1", "sentence2"], "label",
          {"not_equivalent": "False", "equivalent": "True"}, _PAIR_FORMAT, None,
          ["not_equivalent", "equivalent"], "train", "validation"),
    _spec("sick", "sick", None, ["sentence_A", "sentence_B"], "label",
          {"entailment": "True", "neutral": "Not sure", "contradiction": "False"}, _PAIR_FORMAT, None,
          ["entailment", "neutral", "contradiction"], "train", "test"),
    _spec("rte", "nyu-mll/glue", "rte", ["sentence1", "sentence2"], "label",
          {"entailment": "True", "not_entailment": "False"}, _PAIR_FORMAT, None,
          ["entailment", "not_entailment"], "train", "validation"),
    _spec("ag_news", "fancyzhx/ag_news", None, ["text"], "label",
          {"World": "World", "Sports": "Sports", "Business": "Business", "Sci/Tech": "Science"},
          "Article: {text}\nAnswer: {label}.", None, ["World", "Sports", "Business", "Sci/Tech"],
          "train", "test"),
    _spec("trec", "CogComp/trec", None, ["text"], "coarse_label", _TREC_WORDS,
          "Question: {text}\nAnswer Type: {label}.",
          "Classify the questions based on whether their answer type is a Number, Location, Person, "
          "Description, Entity, or Abbreviation.",
          ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"], "train", "test"),
    _spec("dbpedia_14", "fancyzhx/dbpedia_14", None, ["content"], "label", _DBPEDIA_WORDS,
          "Article: {text}\nAnswer: {label}.",
          "Classify the documents based on whether they are about a Company, School, Artist, Athlete, "
          "Politician, Transportation, Building, Nature, Village, Animal, Plant, Album, Film, or Book.",
          list(_DBPEDIA_WORDS), "train", "test"),
    _spec("unnatural", None, None, ["object"], "category",
          {name: name for name in UNNATURAL_OBJECTS}, "{text}: {label}.",
          "Consider the categories plant/vegetable, sport, and animal. Classify each object in its category.",
          list(UNNATURAL_OBJECTS), "all", "all", main=False),
    _spec("sst2_ab", "stanfordnlp/sst2", None, ["sentence"], "label",
          {"negative": "A", "positive": "B"}, "Review: {text}\nAnswer: {label}.", None,
          ["negative", "positive"], "train", "validation", main=False, data_key="sst2"),
]

DATASETS: dict[str, DatasetSpec] = {spec.key: spec for spec in _TABLE}
MAIN_DATASETS: tuple[str, ...] = tuple(spec.key for spec in _TABLE if spec.main)


def get_spec(key: str) -> DatasetSpec:
    try:
        return DATASETS[key]
    except (KeyError, TypeError):
        raise FalseDemoError(f"unknown dataset key {key!r}; allowed: {', '.join(DATASETS)}") from None


def _normalise_name(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def data_source(key: str) -> str:
    """Where ``load_examples(key)`` reads from: 'builtin', 'hub:<id>' or the local folder path."""
    spec = get_spec(key)
    if spec.hub_path is None:
        return "builtin"
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return str(Path(data_dir) / spec.local_folder_name)
    return f"hub:{spec.hub_path}" + (f"/{spec.hub_config}" if spec.hub_config else "")


def data_source_summary() -> dict:
    """Where non-built-in datasets are read from, for results files: the local folder or the hub."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return {"kind": "local", "path": str(Path(data_dir).resolve())}
    return {"kind": "hub"}


def _read_local_split(spec: DatasetSpec, folder: Path, split: str) -> tuple[list[dict], tuple[str, ...]]:
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        raise FalseDemoError(
            f"dataset {spec.key!r}: split {split!r} not found in local folder {folder} "
            f"(expected {path.name}; present: {', '.join(present) or 'none'}; "
            f"folder from {DATA_DIR_ENV}={os.environ.get(DATA_DIR_ENV)!r})"
        )
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise FalseDemoError(f"dataset {spec.key!r}: {path}:{line_number} is not JSON: {error}") from None
    needed = (*spec.text_columns, spec.label_column)
    for index, row in enumerate(rows):
        missing = [column for column in needed if column not in row]
        if missing:
            raise FalseDemoError(
                f"dataset {spec.key!r}: row {index} of {path} lacks column(s) {', '.join(missing)}; "
                f"needed: {', '.join(needed)}"
            )
    return rows, spec.hub_label_names


def _read_hub_split(spec: DatasetSpec, split: str) -> tuple[list[dict], tuple[str, ...]]:
    import datasets as hf_datasets

    source = data_source(spec.key)
    try:
        table = hf_datasets.load_dataset(spec.hub_path, spec.hub_config, split=split)
    except Exception as error:
        raise FalseDemoError(
            f"could not load dataset {spec.key!r} from {source} (split {split!r}): {error}. "
            f"To use a local copy, set {DATA_DIR_ENV} to a folder with {spec.key}/<split>.jsonl "
            f"(currently {DATA_DIR_ENV}={os.environ.get(DATA_DIR_ENV)!r})"
        ) from error
    needed = (*spec.text_columns, spec.label_column)
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise FalseDemoError(
            f"dataset {spec.key!r} from {source} split {split!r} lacks column(s) {', '.join(missing)}; "
            f"present: {', '.join(table.column_names)}"
        )
    feature = table.features[spec.label_column]
    hub_names = tuple(getattr(feature, "names", None) or spec.hub_label_names)
    if sorted(map(_normalise_name, hub_names)) != sorted(map(_normalise_name, spec.hub_label_names)):
        raise FalseDemoError(
            f"dataset {spec.key!r} from {source}: label names {list(hub_names)} differ from the documented "
            f"{list(spec.hub_label_names)}; refusing to match label words by position"
        )
    return list(table.select_columns(list(needed))), hub_names


def _unnatural_rows() -> list[dict]:
    return [{"object": obj, "category": index}
            for index, objects in enumerate(UNNATURAL_OBJECTS.values()) for obj in objects]


def _to_examples(spec: DatasetSpec, split: str, rows: list[dict], hub_names: tuple[str, ...]) -> list[Example]:
    our_index = {_normalise_name(name): i for i, name in enumerate(spec.class_names)}
    id_to_ours = {hub_id: our_index.get(_normalise_name(name)) for hub_id, name in enumerate(hub_names)}
    examples = []
    for row_index, row in enumerate(rows):
        hub_label = row[spec.label_column]
        if hub_label not in id_to_ours:
            raise FalseDemoError(
                f"dataset {spec.key!r} split {split!r} row {row_index}: label {hub_label!r} is not one of the "
                f"ids 0..{len(hub_names) - 1} ({', '.join(hub_names)}); is this split unlabelled?"
            )
        label = id_to_ours[hub_label]
        if label is None:  # a class the benchmark does not use
            continue
        fields = tuple(str(row[column]).strip() for column in spec.text_columns)
        examples.append(Example(uid=f"{split}:{row_index}", fields=fields, label=label))
    return examples


def _load_split(spec: DatasetSpec, split: str) -> list[Example]:
    if spec.hub_path is None:
        return _to_examples(spec, split, _unnatural_rows(), spec.hub_label_names)
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        rows, names = _read_local_split(spec, Path(data_dir) / spec.local_folder_name, split)
    else:
        rows, names = _read_hub_split(spec, split)
    return _to_examples(spec, split, rows, names)


_CACHE: dict[tuple[str, str], tuple[list[Example], list[Example]]] = {}


def load_examples(key: str) -> tuple[list[Example], list[Example]]:
    """(demo pool, queries) for dataset ``key``; deterministic, cached per process and data source."""
    spec = get_spec(key)
    cache_key = (key, data_source(key))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    if spec.single_split:
        rows = _load_split(spec, spec.demo_split)
        if spec.hub_path is None:
            pool, queries = rows, list(rows)
        else:
            order = list(range(len(rows)))
            random.Random(PARTITION_SEED).shuffle(order)
            cut = int(round(len(rows) * (1 - QUERY_SHARE_SINGLE_SPLIT)))
            pool = [rows[i] for i in sorted(order[:cut])]
            queries = [rows[i] for i in order[cut:]]
    else:
        pool = _load_split(spec, spec.demo_split)
        queries = _load_split(spec, spec.query_split)
    queries = list(queries)
    random.Random(PARTITION_SEED).shuffle(queries)
    _CACHE[cache_key] = (pool, queries)
    return pool, queries
