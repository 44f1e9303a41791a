"""Where fine-tuning (and ``tljax.from_pretrained``, ``tljax convert``) starts: an ``init_from`` spec
resolved to a ``Pretrained``. A tljax pretraining run (workdir, its checkpoints/ folder, or one step of
it), a Hugging Face BERT / GPT-2 / Llama folder (``hf:/path``, ``hf:org/name`` from the local hub cache,
or the aliases ``hf:minilm`` and ``hf:smollm2``), a GGUF file (``gguf:/path/model.gguf``), or nothing
(``none``: the same architecture and tokenizer, random weights).

Above the readers (``tljax.pretrained`` for tljax runs, ``tljax.hf`` for Hugging Face folders,
``tljax.gguf_import`` for GGUF files): they do not import this module.
"""
from __future__ import annotations

import os
from pathlib import Path

from tljax import gguf_import, hf
from tljax.pretrained import Pretrained, PretrainedError, load_run


def _load(path: str, with_weights: bool = True) -> Pretrained:
    if path.startswith("hf:") and path[3:] in gguf_import.ALIASES:  # hf:smollm2, published offline as a GGUF
        return gguf_import.load_gguf(path[3:], with_weights=with_weights)
    if path.startswith("hf:"):
        return hf.load_hf(path, with_weights=with_weights)
    if path.startswith("gguf:"):
        return gguf_import.load_gguf(path, with_weights=with_weights)
    try:
        return load_run(path, with_weights=with_weights)
    except PretrainedError as e:
        folder = Path(path).expanduser()
        if (folder / "config.json").exists() and not (folder / "checkpoints").exists() and (
                "model_type" in (folder / "config.json").read_text()):
            raise PretrainedError(f"{e}; {folder} looks like a Hugging Face model folder: "
                                  f"give it as hf:{path}") from None
        raise


def resolve(init_from: str, model_like: str = "", with_weights: bool = True) -> Pretrained:
    """``init_from``: a run path, ``hf:<folder or alias>``, or ``none`` (random weights; architecture and
    tokenizer from ``model_like``, itself a run path or ``hf:`` spec). with_weights=False: architecture,
    tokenizer and config only (``params`` None), without reading the weights."""
    if not init_from:
        raise PretrainedError("init_from is empty; give a pretraining workdir (e.g. runs/bert_tiny), "
                              "hf:<Hugging Face folder> or 'none'")
    if init_from == "none":
        if not model_like:
            raise PretrainedError("init_from=none needs model_like=<pretraining workdir> to take the architecture "
                                  "and tokenizer from (its weights are not used)")
        return _load(model_like, with_weights=False)
    return _load(init_from, with_weights=with_weights)


def as_pretrained(source) -> Pretrained:
    """``source`` (a Pretrained, a run path or an ``hf:`` spec) as a Pretrained."""
    return source if isinstance(source, Pretrained) else resolve(str(source))


def from_pretrained(path: str | os.PathLike) -> hf.PretrainedModel:
    """The callable model of ``tljax.from_pretrained`` (see there)."""
    return hf.PretrainedModel(resolve(str(path)))
