"""Tokenize documents and pack them into fixed-length sequences, and serve global batches.

Packing wastes no positions on padding: BERT sequences are ``[CLS] tokens… [SEP]`` cut from the stream
of documents joined by ``[SEP]``; GPT sequences are windows of the stream with ``<|endoftext|>`` between
documents. The packed array [N, T] int32 is cached on disk (keyed by the data and the tokenizer).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


def _batched(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def token_stream(docs: Iterable[str], tokenizer, separator_id: int, progress=None) -> np.ndarray:
    """All documents' token ids, each followed by ``separator_id``, as one int32 array [total]. Every document
    whole and unpadded, whatever truncation / padding the tokenizer carries."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        # A tokenizer saved with them (sentence-transformers' MiniLM: truncate to 128, pad to 128) would cut
        # long documents and fill the stream with [PAD]: encode with a copy that does neither.
        from tokenizers import Tokenizer
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    chunks = []
    for batch in _batched(docs, 1024):
        for enc in backend.encode_batch(batch, add_special_tokens=False):  # parallel in Rust
            chunks.append(np.asarray(enc.ids + [separator_id], np.int32))
        if progress is not None:
            progress(sum(len(d) for d in batch))
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.int32)


def pack(stream: np.ndarray, seq_len: int, kind: str, cls_id: int | None = None,
         sep_id: int | None = None) -> np.ndarray:
    """Cut a token stream into sequences [N, seq_len] (the tail shorter than one sequence is dropped).

    kind "bert": each row is [CLS] + (seq_len - 2) stream tokens + [SEP]; kind "gpt": plain windows.
    """
    if kind == "bert":
        body = seq_len - 2
        n = len(stream) // body
        rows = stream[: n * body].reshape(n, body)
        return np.concatenate([np.full((n, 1), cls_id, np.int32), rows, np.full((n, 1), sep_id, np.int32)], 1)
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len).copy()


def cache_key(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def cached_array(path: Path, build) -> np.ndarray:
    """Load ``path`` if it exists, else ``build()`` and save it atomically (no half-written cache)."""
    if path.exists():
        return np.load(path)
    array = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
    return array


class PackedBatches:
    """Global batches of packed sequences in a seeded, per-epoch shuffled order.

    The batch at step s is a pure function of (sequences, seed, s): resuming at step s needs only s, and
    each process reads only the rows of that global batch that its devices hold, so the sequence of global
    batches does not depend on the number of processes.
    """

    def __init__(self, sequences: np.ndarray, global_batch: int, seed: int):
        if len(sequences) == 0:
            raise ValueError("the data source produced no full sequence; give more text or a smaller seq_len")
        self.sequences = sequences
        self.global_batch = global_batch
        self.seed = seed
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.sequences))
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        """Row indices [global_batch] of the batch at ``step``."""
        n = len(self.sequences)
        flat = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = flat // n, flat % n
        return np.array([self._permutation(e)[o] for e, o in zip(epochs, offsets)])

    def position(self, step: int) -> dict:
        """Where the stream is before ``step`` (saved with checkpoints)."""
        consumed = step * self.global_batch
        return {"step": step, "epoch": consumed // len(self.sequences),
                "index_in_epoch": consumed % len(self.sequences), "sequences": len(self.sequences)}

    def local_batch(self, step: int, positions: np.ndarray | None = None) -> np.ndarray:
        """Rows [n, T] of the global batch at ``step``: those at ``positions`` [n] (indices into the global
        batch; a process passes the ones its devices hold, ``distributed.local_rows``), default all."""
        idx = self.indices(step)
        return self.sequences[idx if positions is None else idx[positions]]
