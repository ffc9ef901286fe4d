"""Build, from the local copies, folders laid out as the benchmark's hub repos are at the pinned revisions.

Main-branch repos (converted to parquet by the hub) hold ``README.md`` whose YAML lists ``dataset_info``
(features, with ClassLabel names) and ``configs`` (data files per split), and the files
``<dir>/<split>-00000-of-00001.parquet`` (``data/`` for a single-config repo, ``<config>/`` otherwise; e.g.
``nyu-mll/glue`` has ``mrpc/train-00000-of-00001.parquet``, ``fancyzhx/dbpedia_14`` has
``dbpedia_14/train-00000-of-00001.parquet``). The ``refs/convert/parquet`` branch of a script-only repo has no
README: ``<config>/<split>/0000.parquet`` only. Every parquet file carries the features in its schema metadata
(``{"huggingface": {"info": {"features": ...}}}``), written here by ``datasets`` itself as on the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

# repo -> (layout, {dataset key: (config or data_dir, hub ClassLabel names or None for the documented ones)})
MAIN, PARQUET_EXPORT = "main", "parquet_export"
REPOS = {
    "stanfordnlp/sst2": (MAIN, {"sst2": ("default", None)}),
    "google-research-datasets/poem_sentiment": (MAIN, {"poem_sentiment": ("default", None)}),
    "cardiffnlp/tweet_eval": (MAIN, {"tweet_eval_hate": ("hate", None),
                                     "tweet_eval_stance_atheism": ("stance_atheism", None),
                                     "tweet_eval_stance_feminist": ("stance_feminist", None)}),
    # The hub's names for this one are the strings "0" and "1" (the table maps them explicitly).
    "curaihealth/medical_questions_pairs": (MAIN, {"medical_questions_pairs": ("default", ["0", "1"])}),
    "nyu-mll/glue": (MAIN, {"mrpc": ("mrpc", None), "rte": ("rte", None)}),
    "fancyzhx/ag_news": (MAIN, {"ag_news": ("default", None)}),
    "fancyzhx/dbpedia_14": (MAIN, {"dbpedia_14": ("dbpedia_14", None)}),
    "takala/financial_phrasebank": (PARQUET_EXPORT, {"financial_phrasebank": ("sentences_allagree", None)}),
    "iamollas/ethos": (PARQUET_EXPORT, {"ethos": ("binary", None)}),
    "RobZamp/sick": (PARQUET_EXPORT, {"sick": ("default", None)}),
    "CogComp/trec": (PARQUET_EXPORT, {"trec": ("default", None)}),
}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _dataset(rows: list[dict], label_column: str, label_names):
    import datasets

    table = datasets.Dataset.from_list(rows)
    features = table.features.copy()
    features[label_column] = datasets.ClassLabel(names=list(label_names))
    return table.cast(features)


def build_hub_mirror(data_dir: Path, root: Path, keys=None, decoy_configs: bool = True) -> Path:
    """Write ``root/<namespace>/<name>/...`` for every repo of ``keys`` (default: the 14 main datasets)."""
    import datasets
    from lm_eval_false_demos.core.datasets import MAIN_DATASETS, get_spec

    wanted = set(MAIN_DATASETS if keys is None else keys)
    for repo, (layout, members) in REPOS.items():
        members = {key: value for key, value in members.items() if key in wanted}
        if not members:
            continue
        folder = root / repo
        card = {"dataset_info": [], "configs": []}
        for key, (config_name, hub_names) in members.items():
            spec = get_spec(key)
            names = hub_names or list(spec.hub_label_names)
            splits = sorted(p.stem for p in (data_dir / key).glob("*.jsonl"))
            info_splits = []
            for split in splits:
                table = _dataset(_read_jsonl(data_dir / key / f"{split}.jsonl"), spec.label_column, names)
                if layout == MAIN:
                    subdir = "data" if config_name == "default" else config_name
                    path = folder / subdir / f"{split}-00000-of-00001.parquet"
                else:
                    path = folder / config_name / split / "0000.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                table.to_parquet(str(path))
                info_splits.append({"name": split, "num_bytes": table.data.nbytes, "num_examples": len(table)})
            if layout == MAIN:
                info = datasets.DatasetInfo(features=table.features)._to_yaml_dict()
                card["dataset_info"].append({"config_name": config_name, **info, "splits": info_splits})
                card["configs"].append({"config_name": config_name, "data_files": [
                    {"split": split, "path": f"{subdir}/{split}-*"} for split in splits]})
            elif decoy_configs and spec.hub.data_dir:
                # Another config of the same export, so a loader that ignored data_dir would read both.
                decoy = folder / f"{config_name}_decoy" / splits[0] / "0000.parquet"
                decoy.parent.mkdir(parents=True, exist_ok=True)
                table.select(range(3)).to_parquet(str(decoy))
        if layout == MAIN:
            (folder / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n",
                                              encoding="utf-8")
    return root
