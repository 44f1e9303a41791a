"""A second offline labeled set for the few-shot benchmark: WordNet noun definitions -> their topic.

Each example is the definition of one WordNet 3.0 noun synset (the gloss before its quoted usage
examples, without the synset's own words, so the headword does not give the answer) and its label is the
synset's lexicographer file: six concrete topics whose names are plain English words, so a causal LM can
also be prompted with them.

    animal (noun.animal)  body (noun.body)  food (noun.food)  location (noun.location)
    person (noun.person)  plant (noun.plant)

Source: Debian ``wordnet-base`` (``usr/share/wordnet/data.noun``, WordNet 3.0, Princeton's BSD-style
license), fetched by ``tljax.data.fetch.fetch_deb`` like the pretraining corpus, into the tljax cache.
Split: a stable hash of the synset offset puts 1 in 10 synsets in the test pool, from which a seeded,
class-balanced sample of ``--test_per_class`` definitions is the test set; every other synset is training
data (a definition text found in both is dropped from training). Nothing is downloaded from a dataset host.

    python scripts/make_wordnet_topics.py            # writes <cache>/wordnet_topics/{train,test}.csv
    python scripts/bench_fewshot.py --task wordnet_topics --budget 300 --seeds 0 1 2 3 4 ...

The tiny tljax BERT's pretraining corpus contains these glosses (its ``wordnet`` source); MiniLM,
SmolLM2 and SetFit, the models this set is for, were not trained by tljax.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tljax.data.fetch import fetch_deb, stable_hash  # noqa: E402
from tljax.utils import cache_dir  # noqa: E402

TOPICS = {5: "animal", 8: "body", 13: "food", 15: "location", 18: "person", 20: "plant"}  # lex file -> label


def definitions(lines) -> list[tuple[str, str, str]]:
    """(synset offset, label, definition) of the ``data.noun`` lines whose lexicographer file is a topic;
    the definition is the gloss up to its first quoted example."""
    out = []
    for line in lines:
        if line.startswith("  ") or " | " not in line:  # license header, or no gloss
            continue
        fields, gloss = line.split(" | ", 1)
        parts = fields.split()
        label = TOPICS.get(int(parts[1]))
        text = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        if label and len(text.split()) >= 3:
            out.append((parts[0], label, text))
    return out


def split(rows: list[tuple[str, str, str]], test_per_class: int, seed: int = 0) -> tuple[list, list]:
    """(train, test) lists of (text, label): test = a class-balanced sample of the hashed 1-in-10 pool."""
    pool = [r for r in rows if stable_hash(r[0]) % 10 == 0]
    rng = np.random.default_rng(seed)
    test = []
    for label in sorted(TOPICS.values()):
        of_label = [r for r in pool if r[1] == label]
        pick = rng.permutation(len(of_label))[:test_per_class]
        test += [(of_label[i][2], label) for i in sorted(pick)]
    test_texts = {t for t, _ in test}
    train = [(text, label) for offset, label, text in rows
             if stable_hash(offset) % 10 != 0 and text not in test_texts]
    return train, test


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    tmp.replace(path)


def main(argv=None) -> dict[str, Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test_per_class", type=int, default=200)
    ap.add_argument("--out", default="", help="output folder (default: <tljax cache>/wordnet_topics)")
    args = ap.parse_args(argv)
    root = fetch_deb("wordnet-base", cache_dir() / "raw" / "wordnet-base", members=["usr/share/wordnet/data."])
    with open(root / "usr/share/wordnet/data.noun", encoding="utf-8", errors="replace") as f:
        rows = definitions(f)
    train, test = split(rows, args.test_per_class)
    out = Path(args.out) if args.out else cache_dir() / "wordnet_topics"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "train.csv", "test": out / "test.csv"}
    write_csv(paths["train"], train)
    write_csv(paths["test"], test)
    count = lambda rows: {label: sum(1 for _, y in rows if y == label) for label in sorted(TOPICS.values())}
    print(f"wordnet_topics: {len(train)} training definitions {count(train)}, {len(test)} test {count(test)} "
          f"-> {out}")
    return paths


if __name__ == "__main__":
    main()
