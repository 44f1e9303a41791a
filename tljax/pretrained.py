"""Where fine-tuning starts: a tljax pretraining run (workdir, its checkpoints/ folder, or one step of
it), a Hugging Face BERT / GPT-2 / Llama folder (``hf:/path``, ``hf:org/name`` from the local hub cache, or
the aliases ``hf:minilm`` and ``hf:smollm2``; see ``tljax.hf``), a GGUF file (``gguf:/path/model.gguf``,
see ``tljax.gguf_import``), or nothing (``none``: the same architecture and tokenizer, random
weights)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_collections

from tljax.checkpoint import read_params
from tljax.data import tokenizer as tok_lib
from tljax.models import TransformerConfig, model_config
from tljax.models.scan import unstack_layers


class PretrainedError(ValueError):
    """A checkpoint that cannot serve as a starting point; the message names the fix."""


@dataclasses.dataclass
class Pretrained:
    """run_dir: the pretraining workdir; config: its resolved config (dict); model: its architecture;
    tokenizer: its Hugging Face tokenizer; params: the LanguageModel params (host arrays) or None for a
    random start."""

    run_dir: Path
    config: dict
    model: TransformerConfig
    tokenizer: object
    params: dict | None


def _locate(path: Path) -> tuple[Path, Path, int | None]:
    """-> (run dir, checkpoints dir, step or None for latest) for a workdir, checkpoints/ or a step dir."""
    path = path.expanduser().absolute()
    if (path / "checkpoints").is_dir():
        return path, path / "checkpoints", None
    if path.name == "checkpoints" and path.is_dir():
        return path.parent, path, None
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, path.parent, int(path.name)
    raise PretrainedError(f"{path} is not a tljax pretraining run (no checkpoints/ folder); give the workdir "
                          f"of 'tljax pretrain', its checkpoints/ folder or one checkpoint step")


def load_run(path: str | Path, with_weights: bool = True) -> Pretrained:
    run_dir, ckpt_dir, step = _locate(Path(path))
    config_path = run_dir / "config.json"
    if not config_path.exists() or not (run_dir / "tokenizer").is_dir():
        raise PretrainedError(f"{run_dir} lacks config.json or tokenizer/; it was not written by 'tljax pretrain'")
    config = json.loads(config_path.read_text())
    model = model_config(ml_collections.ConfigDict(config["model"]))
    tokenizer = tok_lib.load_tokenizer(run_dir / "tokenizer")
    params = None
    if with_weights:
        params, step = read_params(ckpt_dir, step)
    if model.scan_layers:
        # Layer groups (freezing, layer-wise rates) and exports key off per-layer paths: a scanned run
        # is loaded in the per-layer layout, which computes the same function.
        params = None if params is None else unstack_layers(params)
        model = dataclasses.replace(model, scan_layers=False)
    return Pretrained(run_dir, config, model, tokenizer, params)


def _load(path: str, with_weights: bool = True) -> Pretrained:
    if path.startswith("hf:"):
        from tljax.hf import load_hf
        return load_hf(path, with_weights=with_weights)
    if path.startswith("gguf:"):
        from tljax.gguf_import import load_gguf
        return load_gguf(path, with_weights=with_weights)
    try:
        return load_run(path, with_weights=with_weights)
    except PretrainedError as e:
        folder = Path(path).expanduser()
        if (folder / "config.json").exists() and not (folder / "checkpoints").exists() and (
                "model_type" in (folder / "config.json").read_text()):
            raise PretrainedError(f"{e}; {folder} looks like a Hugging Face model folder: "
                                  f"give it as hf:{path}") from None
        raise


def resolve(init_from: str, model_like: str = "") -> Pretrained:
    """``init_from``: a run path, ``hf:<folder or alias>``, or ``none`` (random weights; architecture and
    tokenizer from ``model_like``, itself a run path or ``hf:`` spec)."""
    if not init_from:
        raise PretrainedError("init_from is empty; give a pretraining workdir (e.g. runs/bert_tiny), "
                              "hf:<Hugging Face folder> or 'none'")
    if init_from == "none":
        if not model_like:
            raise PretrainedError("init_from=none needs model_like=<pretraining workdir> to take the architecture "
                                  "and tokenizer from (its weights are not used)")
        return _load(model_like, with_weights=False)
    return _load(init_from)
