"""Language-modelling data: the documents a pretraining config selects (train / held-out), the run's
tokenizer, and the packed [N, seq_len] id arrays, cached by data + tokenizer.

Process 0 prepares the tokenizer and the packed arrays first; the other processes then load what it
saved (the tokenizer trainer is not deterministic across processes)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import jax
import numpy as np

from tljax import distributed
from tljax.config import ConfigError
from tljax.data import packing, sources
from tljax.data import tokenizer as tok_lib
from tljax.utils import cache_dir, log


def eval_source(data_cfg) -> str:
    """The held-out source: ``data.eval_source``, else the built-in corpus's own eval split when training
    on it, else "" (hold out ``data.holdout`` of the training documents by text hash)."""
    if data_cfg.eval_source:
        return data_cfg.eval_source
    return "builtin:corpus_eval" if data_cfg.source == "builtin:corpus" else ""


def train_documents(data_cfg):
    docs = sources.iter_documents(data_cfg.source)
    holdout = 0.0 if eval_source(data_cfg) else data_cfg.holdout
    return sources.select_documents(docs, subsample=data_cfg.subsample, holdout=holdout)


def eval_documents(data_cfg):
    if eval_source(data_cfg):
        return sources.iter_documents(eval_source(data_cfg))
    return sources.select_documents(sources.iter_documents(data_cfg.source), subsample=data_cfg.subsample,
                                    holdout=data_cfg.holdout, take_holdout=True)


def data_keys(data_cfg) -> tuple[str, str]:
    """Cache keys (train, eval) of the documents selected by ``data_cfg``."""
    train_key = sources.fingerprint(data_cfg.source) + f"|train|{data_cfg.subsample}|{data_cfg.holdout}"
    held = eval_source(data_cfg)
    return train_key, (sources.fingerprint(held) if held else train_key + "|holdout")


def setup_tokenizer(config, workdir: Path, check=None, given=None):
    """The run's tokenizer: the one saved in the workdir, else ``given`` (continued pretraining: the source's),
    else data.tokenizer.path, else a newly trained one (cached per data + settings). ``check(tokenizer)``
    raises on a config the tokenizer cannot serve.

    One process: nothing is written into the workdir here (``save_tokenizer`` does, once the whole run is
    validated). Several processes: process 0 prepares, checks and saves it into the workdir, and the others
    load what it saved rather than train their own (training is not deterministic across processes)."""
    def lead():
        tokenizer = prepare_tokenizer(config, workdir, given)
        if check is not None:
            check(tokenizer)
        if jax.process_count() > 1:
            save_tokenizer(tokenizer, workdir)
        return tokenizer

    def saved():
        if not (workdir / "tokenizer" / "tokenizer.json").exists():
            raise ConfigError(f"process {jax.process_index()} does not see {workdir / 'tokenizer'}, "
                              f"which process 0 wrote: the workdir must be on a filesystem every "
                              f"process shares (NFS, a cloud bucket mount)")
        return tok_lib.load_tokenizer(workdir / "tokenizer")

    return distributed.lead_first("preparing the tokenizer", lead, saved)


def prepare_tokenizer(config, workdir: Path, given=None):
    """The tokenizer of ``config`` (see ``setup_tokenizer``), without writing into ``workdir``."""
    out = workdir / "tokenizer"
    if (out / "tokenizer.json").exists():
        return tok_lib.load_tokenizer(out)
    if given is not None:
        return given
    tcfg = config.data.tokenizer
    if tcfg.path:
        return tok_lib.load_tokenizer(tcfg.path)
    # The trainer breaks ties in hash-map order (differs between processes), so a trained tokenizer is
    # cached per data + settings: runs of one config on one machine share the exact same vocabulary.
    key = packing.cache_key(sources.fingerprint(config.data.source), tcfg.kind, str(tcfg.vocab_size),
                            str(tcfg.train_fraction), str(config.data.subsample), str(config.data.holdout),
                            eval_source(config.data))
    cached = cache_dir() / "tokenizers" / key
    if (cached / "tokenizer.json").exists():
        return tok_lib.load_tokenizer(cached)
    t0 = time.time()
    docs = sources.select_documents(train_documents(config.data), subsample=tcfg.train_fraction)
    tokenizer = tok_lib.train_tokenizer(tcfg.kind, docs, tcfg.vocab_size)
    log(f"trained a {tcfg.kind} tokenizer, {len(tokenizer)} tokens, in {time.time() - t0:.0f}s")
    _save_tokenizer(tokenizer, cached)
    return tokenizer


def save_tokenizer(tokenizer, workdir: Path) -> None:
    """Save the run's tokenizer as ``workdir/tokenizer`` (Hugging Face format), unless it is there."""
    if not (workdir / "tokenizer" / "tokenizer.json").exists():
        _save_tokenizer(tokenizer, workdir / "tokenizer")


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """save_pretrained into ``folder`` atomically (a crash never leaves a half-written tokenizer)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def packed_sequences(docs_fn, spec_key: str, tokenizer, config) -> np.ndarray:
    """[N, seq_len] int32 packed sequences, cached under the data cache keyed by data + tokenizer.
    Process 0 builds the cache first; the others then load it (or, with a cache per host, build the same)."""
    kind = config.model.kind
    sep = tokenizer.sep_token_id if kind == "bert" else tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer
    # A tokenizer with its own truncation / padding was once packed with them (cut, [PAD]-filled rows):
    # such arrays in a cache are not reused. Other tokenizers keep their keys (and caches).
    whole = ("whole_documents",) if backend.truncation is not None or backend.padding is not None else ()
    key = packing.cache_key(spec_key, tok_lib.tokenizer_fingerprint(tokenizer), str(config.data.seq_len), kind, *whole)

    def build():
        t0 = time.time()
        stream = packing.token_stream(docs_fn(), tokenizer, sep)
        seqs = packing.pack(stream, config.data.seq_len, kind, tokenizer.cls_token_id, sep)
        log(f"tokenized and packed {len(stream):,} tokens into {len(seqs):,} sequences in {time.time() - t0:.0f}s")
        return seqs

    path = cache_dir() / "packed" / f"{key}.npy"
    return distributed.lead_first("packing the data", lambda: packing.cached_array(path, build))


def unigram_loss(sequences: np.ndarray, vocab: int, exclude: list[int]) -> float:
    """Cross-entropy (nats) of the best context-free predictor: the entropy of the token frequencies."""
    counts = np.bincount(sequences.ravel(), minlength=vocab).astype(np.float64)
    counts[exclude] = 0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
