"""Zero- and few-shot classification with a causal LM (``tljax zeroshot``): each label's verbalizer
continuation is scored by its log-probability after the prompt, and the best-scoring label is predicted.

    tljax zeroshot --model hf:smollm2 --data csv:test.csv --workdir runs/zs \\
        --config.prompt="Review: {text}\\nSentiment:" \\
        --config.verbalizer='{"positive": " positive", "negative": " negative"}'

The score of label c for text x is log p(v_c | prefix) = Σ_t log p(v_c[t] | prefix, v_c[<t]) with
prefix = the k in-context examples (each ``prompt`` filled with a training text, followed by its label's
verbalizer and ``example_separator``) and then ``prompt`` filled with x. ``normalize="mean"`` divides by
the number of verbalizer tokens. When every verbalizer is one token, one forward pass per text scores all
labels; otherwise each (text, label) pair is its own row. Writes ``summary.json`` (accuracy, macro-F1, the
settings) and ``predictions.csv`` (text, label, prediction, one log-probability column per label).
"""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import ml_collections

from tljax.config import ConfigError
from tljax.data.labeled import _canonical, read_labeled
from tljax.tasks.classify import macro_f1
from tljax.tasks.prompt import Scorer, Verbalizer, check_causal_lm, fill, label_scores, parse_verbalizer, unescape
from tljax.init_from import resolve
from tljax.utils import log, write_json


def context_prefix(config, examples: list[tuple[str, str]], verbalizer: Verbalizer) -> str:
    """The in-context block: for each (text, label) ``fill(prompt, text) + continuation + separator``."""
    continuation = dict(zip(verbalizer.labels, verbalizer.continuations))
    return "".join(fill(config.prompt, text) + continuation[label] + config.example_separator
                   for text, label in examples)


def pick_examples(texts: list[str], labels: list[str], k: int, label_order: list[str], seed: int
                  ) -> list[tuple[str, str]]:
    """k (text, label) pairs, class-balanced (round-robin over ``label_order``), random within each class,
    in a shuffled order (so the last example's label is not always the same)."""
    rng = np.random.default_rng(seed)
    by_label = {name: rng.permutation([i for i, y in enumerate(labels) if y == name]).tolist() for name in label_order}
    chosen = []
    while len(chosen) < k and any(by_label.values()):
        for name in label_order:
            if by_label[name] and len(chosen) < k:
                chosen.append(by_label[name].pop())
    order = rng.permutation(len(chosen))
    return [(texts[chosen[i]], labels[chosen[i]]) for i in order]


def run(config, model: str, data: str, workdir: str | Path) -> dict:
    """Classify the texts of ``data`` (a labeled spec) with the causal LM ``model`` (a run path, ``hf:`` or
    ``gguf:`` spec); write ``workdir``/summary.json and predictions.csv. Returns the summary."""
    t_start = time.time()
    workdir = Path(workdir)
    config = ml_collections.ConfigDict(config.to_dict())
    config.prompt, config.example_separator = unescape(config.prompt), unescape(config.example_separator)
    if (workdir / "summary.json").exists():
        raise ConfigError(f"{workdir} already holds a zeroshot result (summary.json); give a new --workdir")
    if "{text}" not in config.prompt:
        raise ConfigError(f"config.prompt={config.prompt!r} has no {{text}} placeholder for the text")
    if config.k_shot < 0 or (config.k_shot and not config.train):
        raise ConfigError(f"config.k_shot={config.k_shot} needs config.train=<labeled spec> to draw the "
                          f"in-context examples from (and k_shot >= 0)")
    pre = resolve(model)
    check_causal_lm(pre, model, "zero-shot scoring")
    tokenizer = pre.tokenizer
    verbalizer = parse_verbalizer(config.verbalizer, tokenizer)

    texts, raw = read_labeled(data, config.text_field, config.label_field)
    labels = [_canonical(y) for y in raw]
    if config.limit:
        texts, labels = texts[: config.limit], labels[: config.limit]
    unknown = sorted(set(labels) - set(verbalizer.labels))
    if unknown:
        raise ConfigError(f"label(s) {unknown[:5]} of {data} have no verbalizer entry (it has "
                          f"{verbalizer.labels}); add them to config.verbalizer")
    examples = []
    if config.k_shot:
        pool_texts, pool_raw = read_labeled(config.train, config.text_field, config.label_field)
        pool_labels = [_canonical(y) for y in pool_raw]
        if config.num_labeled:
            budget = pick_examples(pool_texts, pool_labels, config.num_labeled, verbalizer.labels, config.seed)
            pool_texts, pool_labels = [t for t, _ in budget], [y for _, y in budget]
        missing = sorted(set(pool_labels) - set(verbalizer.labels))
        if missing:
            raise ConfigError(f"label(s) {missing[:5]} of {config.train} have no verbalizer entry; add them")
        examples = pick_examples(pool_texts, pool_labels, config.k_shot, verbalizer.labels, config.seed + 1)
    prefix = context_prefix(config, examples, verbalizer)
    log(f"zeroshot: {len(texts)} texts, labels {verbalizer.labels}, {len(examples)} in-context examples, "
        f"model {pre.model.kind} ({pre.run_dir})")

    scorer = Scorer(pre.model, pre.params, tokenizer, config.batch_size)
    scores = label_scores(scorer, tokenizer, config, texts, verbalizer, prefix)
    predicted = scores.argmax(1)
    gold = np.asarray([verbalizer.labels.index(y) for y in labels])
    accuracy = float((predicted == gold).mean()) if len(gold) else math.nan
    summary = {
        "model": model, "data": data, "num_examples": len(texts), "accuracy": accuracy,
        "macro_f1": macro_f1(gold, predicted, len(verbalizer.labels)) if len(gold) else math.nan,
        "majority_accuracy": float(np.bincount(gold).max() / len(gold)) if len(gold) else math.nan,
        "k_shot": len(examples), "prompt": config.prompt, "verbalizer": dict(zip(verbalizer.labels,
                                                                                  verbalizer.continuations)),
        "normalize": config.normalize, "in_context_examples": [{"text": t, "label": y} for t, y in examples],
        "wall_seconds": time.time() - t_start,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "predictions.csv.tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "prediction"] + [f"logprob_{name}" for name in verbalizer.labels])
        for text, y, p, row in zip(texts, labels, predicted, scores):
            writer.writerow([text, y, verbalizer.labels[p]] + [f"{v:.6f}" for v in row])
    (workdir / "predictions.csv.tmp").replace(workdir / "predictions.csv")
    write_json(workdir / "summary.json", summary)
    log(f"zeroshot: accuracy {accuracy:.4f} (majority {summary['majority_accuracy']:.4f}), macro-F1 "
        f"{summary['macro_f1']:.4f}, {summary['wall_seconds']:.0f}s")
    return summary
