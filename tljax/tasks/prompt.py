"""Scoring a text's labels by prompting a causal LM: each label's verbalizer continuation gets its
log-probability after the prompt filled with the text. Shared by ``tljax zeroshot`` (argmax of the scores),
finetune's ``recipe=prompt_probe`` (a probe on the scores) and the classifier it saves (the same scores of
new texts). Shapes: N texts, C verbalizer labels."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from tljax.config import ConfigError
from tljax.utils import log


def check_causal_lm(pre, source: str, what: str) -> None:
    """``pre`` (a Pretrained from ``source``) must be a causal LM with a pretrained LM head to score
    continuations with; ``what`` names the use in the error. Raises ConfigError naming the fix."""
    if pre.model.kind == "bert":
        raise ConfigError(f"{source} is a BERT encoder; {what} needs a causal LM (gpt or llama) with its LM "
                          f"head, e.g. hf:smollm2 or a 'tljax pretrain' clm run")
    if pre.params is None or not pre.config.get("lm_head_pretrained", True):
        raise ConfigError(f"{source} has no pretrained LM head to score continuations with; {what} needs a "
                          f"causal LM checkpoint that has one (e.g. hf:smollm2 or a 'tljax pretrain' clm run)")


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
    return make_verbalizer([str(k) for k in mapping], [unescape(v) for v in mapping.values()], tokenizer)


def make_verbalizer(labels: list[str], continuations: list[str], tokenizer) -> Verbalizer:
    """The Verbalizer of these continuation texts (used as given: no escapes are read)."""
    ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in continuations]
    return Verbalizer(list(labels), list(continuations), ids)


def unescape(text: str) -> str:
    """``\\n`` and ``\\t`` typed as two characters (a shell's "…\\n…") -> newline and tab; ``\\\\`` -> one
    backslash. Nothing else changes."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def fill(prompt: str, text: str) -> str:
    """``prompt`` with ``{text}`` replaced (only that placeholder: other braces stay as written)."""
    return prompt.replace("{text}", text)


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

    def __init__(self, model_config, params: dict, tokenizer, batch_size: int):
        import jax
        import jax.numpy as jnp
        from tljax.models import LanguageModel
        module = LanguageModel(model_config)
        self.params = jax.device_put(params)
        self.batch_size, self.max_len = batch_size, model_config.max_len
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


def label_scores(scorer: Scorer, tokenizer, config, texts: list[str], verbalizer: Verbalizer, prefix: str) -> np.ndarray:
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


def feature_matrix(scores: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
    """The features a prompt probe sees: scores [N, C] then, if given, pooled hidden features [N, H] ->
    float32 [N, C (+ H)]. One function for the run and its saved classifier: the same order and precision."""
    parts = [np.asarray(scores, np.float32)] + ([np.asarray(hidden, np.float32)] if hidden is not None else [])
    return np.concatenate(parts, axis=1)
