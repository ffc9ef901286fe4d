"""The benchmark's datasets (paper spec section 2): one table (loading them is :mod:`.data_loading`).

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
documented names, through an explicit table where the hub's names are not class names) or, for local
copies, the documented hub names of the label ids. Rows of classes we do not use (poem_sentiment's "mixed")
are dropped; an unlabelled row (-1) is an error.

Hub sources are pinned in the table (:class:`HubSource`): a namespaced repo, a revision, a config (main
branch) or ``data_dir`` (the parquet export of script-only repos, which ``datasets`` >= 4 cannot run), and
the documented split sizes. :func:`data_provenance` records what was actually read and a fingerprint of the
examples, equal for the hub and a local copy holding the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# DATA_DIR_ENV and HUB_MIRROR_ENV are re-exported: the settings users know from this module.
from lm_eval_false_demos.core.data_readers import DATA_DIR_ENV, HUB_MIRROR_ENV  # noqa: F401
from lm_eval_false_demos.errors import FalseDemoError

PARQUET_BRANCH = "refs/convert/parquet"


@dataclass(frozen=True)
class HubSource:
    """One dataset on the hub, pinned: nothing is guessed at run time."""

    repo: str  # always namespaced: huggingface_hub 1.x rejects bare ids
    revision: str = "main"
    config: str | None = None  # a config of the repo's README (main branch)
    data_dir: str | None = None  # a folder of the parquet export: one per config of a script-only repo
    # hub ClassLabel name -> documented name, where the hub's names are not class names
    label_names: dict[str, str] = field(default_factory=dict, hash=False)
    rows: dict[str, int] = field(default_factory=dict, hash=False)  # documented split sizes on the hub


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    hub: HubSource | None  # None for "unnatural" (built in)
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
    def splits(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.demo_split, self.query_split)))

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


def _spec(key, hub, text_columns, label_column, words, demo_format, instruction,
          hub_label_names, demo_split, query_split, main=True, data_key=None):
    return DatasetSpec(
        key=key, hub=hub, text_columns=tuple(text_columns),
        label_column=label_column, class_names=tuple(words), label_words=dict(words),
        demo_format=demo_format, instruction=instruction, hub_label_names=tuple(hub_label_names),
        demo_split=demo_split, query_split=query_split, main=main, data_key=data_key,
    )


def _stance(key, topic, rows):
    hub = HubSource("cardiffnlp/tweet_eval", config=key.removeprefix("tweet_eval_"),
                    rows=dict(zip(("train", "validation", "test"), rows)))
    return _spec(
        key, hub, ["text"], "label", _STANCE_WORDS,
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

_SST2 = HubSource("stanfordnlp/sst2", rows={"train": 67349, "validation": 872, "test": 1821})

_TABLE = [
    _spec("sst2", _SST2, ["sentence"], "label",
          {"negative": "Negative", "positive": "Positive"}, "Review: {text}\nAnswer: {label}.", None,
          ["negative", "positive"], "train", "validation"),
    _spec("poem_sentiment", HubSource("google-research-datasets/poem_sentiment",
                                        rows={"train": 892, "validation": 105, "test": 104}),
          ["verse_text"], "label",
          {"negative": "negative", "positive": "positive", "no_impact": "no impact"},
          "{text}:\nThe sentiment is: {label}.", None,
          ["negative", "positive", "no_impact", "mixed"], "train", "test"),
    _spec("financial_phrasebank", HubSource("takala/financial_phrasebank", PARQUET_BRANCH,
                                              data_dir="sentences_allagree", rows={"train": 2264}),
          ["sentence"], "label",
          {"negative": "Negative", "neutral": "Neutral", "positive": "Positive"},
          "Text: {text}\nSentiment: {label}.", None, ["negative", "neutral", "positive"], "train", "train"),
    _spec("ethos", HubSource("iamollas/ethos", PARQUET_BRANCH, data_dir="binary", rows={"train": 998}),
          ["text"], "label",
          {"no_hate_speech": "no", "hate_speech": "yes"}, "Text: {text}\nAnswer: {label}.",
          "Is the following hate speech? Answer yes or no.", ["no_hate_speech", "hate_speech"],
          "train", "train"),
    _spec("tweet_eval_hate", HubSource("cardiffnlp/tweet_eval", config="hate",
                                         rows={"train": 9000, "validation": 1000, "test": 2970}),
          ["text"], "label",
          {"non-hate": "favor", "hate": "against"}, "Tweet: {text}\nSentiment: {label}.", None,
          ["non-hate", "hate"], "train", "test"),
    _stance("tweet_eval_stance_atheism", "atheism", (461, 52, 220)),
    _stance("tweet_eval_stance_feminist", "feminism", (597, 67, 285)),
    _spec("medical_questions_pairs",
          # The hub's ClassLabel names are the strings "0"/"1"; the dataset card: 1 = similar.
          HubSource("curaihealth/medical_questions_pairs", label_names={"0": "different", "1": "similar"},
                    rows={"train": 3048}),
          ["question_1", "question_2"],
          "label", {"different": "not", "similar": "equivalent"},
          "Question: {text1}.\nQuestion: {text2}.\nAnswer: {label}.",
          "Determine if the two questions are equivalent or not.", ["different", "similar"], "train", "train"),
    _spec("mrpc", HubSource("nyu-mll/glue", config="mrpc",
                            rows={"train": 3668, "validation": 408, "test": 1725}),
          ["sentence1", "sentence2"], "label",
          {"not_equivalent": "False", "equivalent": "True"}, _PAIR_FORMAT, None,
          ["not_equivalent", "equivalent"], "train", "validation"),
    _spec("sick", HubSource("RobZamp/sick", PARQUET_BRANCH,
                            rows={"train": 4439, "validation": 495, "test": 4906}),
          ["sentence_A", "sentence_B"], "label",
          {"entailment": "True", "neutral": "Not sure", "contradiction": "False"}, _PAIR_FORMAT, None,
          ["entailment", "neutral", "contradiction"], "train", "test"),
    _spec("rte", HubSource("nyu-mll/glue", config="rte", rows={"train": 2490, "validation": 277, "test": 3000}),
          ["sentence1", "sentence2"], "label",
          {"entailment": "True", "not_entailment": "False"}, _PAIR_FORMAT, None,
          ["entailment", "not_entailment"], "train", "validation"),
    _spec("ag_news", HubSource("fancyzhx/ag_news", rows={"train": 120000, "test": 7600}), ["text"], "label",
          {"World": "World", "Sports": "Sports", "Business": "Business", "Sci/Tech": "Science"},
          "Article: {text}\nAnswer: {label}.", None, ["World", "Sports", "Business", "Sci/Tech"],
          "train", "test"),
    _spec("trec", HubSource("CogComp/trec", PARQUET_BRANCH, rows={"train": 5452, "test": 500}),
          ["text"], "coarse_label", _TREC_WORDS,
          "Question: {text}\nAnswer Type: {label}.",
          "Classify the questions based on whether their answer type is a Number, Location, Person, "
          "Description, Entity, or Abbreviation.",
          ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"], "train", "test"),
    _spec("dbpedia_14", HubSource("fancyzhx/dbpedia_14", rows={"train": 560000, "test": 70000}),
          ["content"], "label", _DBPEDIA_WORDS,
          "Article: {text}\nAnswer: {label}.",
          "Classify the documents based on whether they are about a Company, School, Artist, Athlete, "
          "Politician, Transportation, Building, Nature, Village, Animal, Plant, Album, Film, or Book.",
          list(_DBPEDIA_WORDS), "train", "test"),
    _spec("unnatural", None, ["object"], "category",
          {name: name for name in UNNATURAL_OBJECTS}, "{text}: {label}.",
          "Consider the categories plant/vegetable, sport, and animal. Classify each object in its category.",
          list(UNNATURAL_OBJECTS), "all", "all", main=False),
    _spec("sst2_ab", _SST2, ["sentence"], "label",
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
