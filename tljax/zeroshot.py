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
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import ml_collections

from tljax.config import ConfigError
from tljax.data.labeled import _canonical, read_labeled
from tljax.tasks.classify import macro_f1
from tljax.init_from import resolve
from tljax.utils import log, write_json


def zeroshot_config() -> ml_collections.ConfigDict:
    """Defaults for ``tljax zeroshot``."""
    c = ml_collections.ConfigDict()
    # Texts (prompt, verbalizer continuations, separator): "\n" and "\t" typed as two characters mean
    # newline and tab, so a shell's "Review: {text}\nSentiment:" works as written.
    c.prompt = "{text}"  # filled with each text ({text}); the verbalizer continues it
    c.verbalizer = ""  # JSON object: label (as in the data) -> continuation text, e.g. {"pos": " positive"}
    c.k_shot = 0  # in-context examples before each query, drawn class-balanced from `train`
    c.train = ""  # labeled spec the in-context examples come from (csv:/jsonl:/tfds:/builtin:)
    c.num_labeled = 0  # the labeled budget the k examples are drawn from (0 = all of `train`)
    c.example_separator = "\n\n"  # between in-context examples and before the query
    c.normalize = "sum"  # "sum" of the continuation's token log-probabilities, or their "mean"
    c.text_field = "text"
    c.label_field = "label"
    c.max_len = 512  # longest scored sequence in tokens; a longer prompt loses tokens at its start
    c.batch_size = 16
    c.limit = 0  # score only the first N texts (0 = all)
    c.seed = 0
    return c


@dataclasses.dataclass
class Verbalizer:
    """labels: the data's label names; continuations: the text each label's score is computed for;
    token_ids: their token ids (each a non-empty list)."""

    labels: list[str]
    continuations: list[str]
    token_ids: list[list[int]]


def parse_verbalizer(text: str, tokenizer) -> Verbalizer:
    """``config.verbalizer`` (a JSON object label -> continuation) -> Verbalizer. Raises ConfigError."""
    if not text:
        raise ConfigError("config.verbalizer is empty; give a JSON object label -> continuation, e.g. "
                          "--config.verbalizer='{\"positive\": \" positive\", \"negative\": \" negative\"}'")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config.verbalizer is not JSON ({e}); give e.g. '{{\"pos\": \" positive\"}}'") from None
    if not isinstance(mapping, dict) or len(mapping) < 2 or not all(isinstance(v, str) and v for v in mapping.values()):
        raise ConfigError("config.verbalizer must map at least 2 labels to non-empty continuation strings")
    labels = [str(k) for k in mapping]
    continuations = [unescape(v) for v in mapping.values()]
    ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in continuations]
    return Verbalizer(labels, continuations, ids)


def unescape(text: str) -> str:
    """``\\n`` and ``\\t`` typed as two characters (a shell's "…\\n…") -> newline and tab; ``\\\\`` -> one
    backslash. Nothing else changes."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def fill(prompt: str, text: str) -> str:
    """``prompt`` with ``{text}`` replaced (only that placeholder: other braces stay as written)."""
    return prompt.replace("{text}", text)


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


def _padded(seqs: list[list[int]], batch_size: int, pad_id: int, max_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and mask [batch_size, T], T = the longest sequence rounded up to 16 (few compiled
    shapes) but at most ``max_width``; rows past len(seqs) are empty."""
    width = min(-(-max(len(s) for s in seqs) // 16) * 16, max_width)
    ids = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), np.int32)
    for r, seq in enumerate(seqs):
        ids[r, :len(seq)] = seq
        mask[r, :len(seq)] = 1
    return ids, mask


class Scorer:
    """A causal LM's log-probabilities on the host, in batches of ``batch_size`` rows (longest first).

    ``continuations(rows)``: rows of (context ids, continuation ids) -> per row [len(continuation)] the
    log-probability of each continuation token given everything before it.
    ``next_token(contexts, token_ids)``: per context the log-probabilities [len(token_ids)] of those tokens
    right after it (one forward pass serves every single-token verbalizer)."""

    def __init__(self, pre, batch_size: int):
        import jax
        import jax.numpy as jnp
        from tljax.models import LanguageModel
        module = LanguageModel(pre.model)
        self.params = jax.device_put(pre.params)
        self.batch_size, self.max_len = batch_size, pre.model.max_len
        tokenizer = pre.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def log_softmax(params, ids, mask):
            return jax.nn.log_softmax(module.apply({"params": params}, ids, mask).astype(jnp.float32), axis=-1)

        # [B, T - 1]: log p(ids[:, t + 1] | ids[:, :t + 1])
        self._next = jax.jit(lambda p, ids, mask: jnp.take_along_axis(
            log_softmax(p, ids, mask)[:, :-1], ids[:, 1:, None], axis=-1)[..., 0])
        # [B, C]: log p(token_ids | ids[:, :last + 1]) at each row's position ``last``
        self._at = jax.jit(lambda p, ids, mask, last, token_ids: jnp.take_along_axis(
            log_softmax(p, ids, mask), last[:, None, None], axis=1)[:, 0][:, token_ids])

    def _batches(self, lengths: list[int]):
        order = np.argsort([-n for n in lengths], kind="stable")
        for lo in range(0, len(order), self.batch_size):
            yield order[lo: lo + self.batch_size]

    def continuations(self, rows: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        out: list[np.ndarray] = [None] * len(rows)
        for chunk in self._batches([len(c) + len(v) for c, v in rows]):
            ids, mask = _padded([rows[i][0] + rows[i][1] for i in chunk], self.batch_size, self.pad_id, self.max_len)
            logp = np.asarray(self._next(self.params, ids, mask))
            for r, i in enumerate(chunk):
                start = len(rows[i][0]) - 1
                out[i] = logp[r, start: start + len(rows[i][1])].astype(np.float64)
        return out

    def next_token(self, contexts: list[list[int]], token_ids: list[int]) -> np.ndarray:
        out = np.zeros((len(contexts), len(token_ids)))
        for chunk in self._batches([len(c) for c in contexts]):
            ids, mask = _padded([contexts[i] for i in chunk], self.batch_size, self.pad_id, self.max_len)
            last = np.zeros(self.batch_size, np.int32)
            last[:len(chunk)] = [len(contexts[i]) - 1 for i in chunk]
            logp = np.asarray(self._at(self.params, ids, mask, last, np.asarray(token_ids, np.int32)))
            out[chunk] = logp[:len(chunk)]
        return out


def classify(scorer: Scorer, tokenizer, config, texts: list[str], verbalizer: Verbalizer, prefix: str) -> np.ndarray:
    """Scores [N, C]: each label's continuation log-probability (summed, or averaged per token with
    ``normalize="mean"``) after ``prefix + fill(prompt, text)`` for each of the N texts."""
    if config.normalize not in ("sum", "mean"):
        raise ConfigError(f"config.normalize={config.normalize!r} unknown; use 'sum' or 'mean'")
    longest = max(len(v) for v in verbalizer.token_ids)
    max_len = min(config.max_len, scorer.max_len)
    budget = max_len - longest
    if budget < 1:
        raise ConfigError(f"config.max_len={config.max_len} (model limit {scorer.max_len}) leaves no room "
                          f"for a prompt before the {longest}-token verbalizer")
    # Too long: the start (the earliest in-context examples) is cut, the query and its cue stay.
    full = [tokenizer(prefix + fill(config.prompt, text))["input_ids"] for text in texts]
    cut = sum(len(ids) > budget for ids in full)
    if cut:
        log(f"note: {cut} of {len(texts)} prompts exceed {budget} tokens (max_len {max_len} less the "
            f"verbalizer); their first tokens are dropped")
    contexts = [ids[-budget:] for ids in full]
    if longest == 1:
        return scorer.next_token(contexts, [v[0] for v in verbalizer.token_ids])
    logps = scorer.continuations([(c, v) for c in contexts for v in verbalizer.token_ids])
    reduce = np.mean if config.normalize == "mean" else np.sum
    return np.asarray([reduce(lp) for lp in logps]).reshape(len(texts), len(verbalizer.labels))


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
    if pre.model.kind == "bert":
        raise ConfigError(f"{model} is a BERT encoder; zero-shot scoring needs a causal LM (gpt or llama)")
    if pre.params is None or not pre.config.get("lm_head_pretrained", True):
        raise ConfigError(f"{model} has no pretrained LM head to score continuations with")
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

    scorer = Scorer(pre, config.batch_size)
    scores = classify(scorer, tokenizer, config, texts, verbalizer, prefix)
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
