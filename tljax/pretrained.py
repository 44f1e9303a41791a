"""A pretrained starting point (``Pretrained``: config, architecture, tokenizer, weights) and how a tljax
pretraining run (workdir, its checkpoints/ folder, or one step of it) is read as one. Hugging Face folders
are read by ``tljax.hf``; ``tljax.init_from`` resolves an ``init_from`` spec to either."""
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
