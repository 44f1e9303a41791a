"""Continued (domain- / task-adaptive) pretraining: a pretraining config with ``init_from`` resolved against
its starting point, and the parameters the run starts from.

What is kept from the source: its tokenizer (no new vocabulary) and its architecture (``ARCHITECTURE``:
a ``model.*`` field left at the defaults of ``tljax.defaults.pretrain_config`` takes the source's value;
one set to anything else must equal it). What comes from the config: the training settings and the
``RUNTIME`` model fields (dropout, precision, remat, scan: they change how the step computes, not what the
parameters are). The BERT MLM head is the source's when it has one; a checkpoint without one (MiniLM, a
``BertModel``) comes with a fresh head from ``tljax.hf.load_hf``: dense + LayerNorm transform, decoder tied
to the word embeddings, bias zeros. Decoders keep their LM head (tied, or Llama's own ``lm_head``).

Once the workdir holds checkpoints the run resumes from them: the architecture and tokenizer are then read
from the workdir itself (its config.json and tokenizer/), and the source's weights are not read again.
Layer 4, beside ``tljax.init_from`` which reads the starting point; ``tljax.pretrain`` runs it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from tljax import distributed
from tljax import init_from as init_from_lib
from tljax.config import ConfigError
from tljax.data import tokenizer as tok_lib
from tljax.defaults import pretrain_config
from tljax.models import LanguageModel, model_config
from tljax.models.scan import stack_layers
from tljax.pretrained import Pretrained, PretrainedError, load_run
from tljax.utils import log

# Model fields that define the parameters: the source's, always.
ARCHITECTURE = ("kind", "vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "max_len",
                "type_vocab_size", "activation", "layer_norm_eps", "init_std", "use_pooler", "num_kv_heads",
                "rope_theta", "rope_scaling", "tie_embeddings")
# Model fields of how the step computes: the config's (a run may change them, as on resume).
RUNTIME = ("dropout", "attention_dropout", "dtype", "attention_impl", "remat", "scan_layers")
# Tokenizer settings that only matter for training a new tokenizer, which continued pretraining never does.
NEW_TOKENIZER = ("kind", "vocab_size", "train_fraction")
OBJECTIVE_KINDS = {"mlm": ("bert",), "clm": ("gpt", "llama")}


@dataclasses.dataclass
class Start:
    """config: the resolved config (``model`` = the source's architecture + the config's RUNTIME fields,
    ``data.tokenizer`` describing the kept tokenizer); tokenizer: the source's; params: LanguageModel params
    (host arrays, in the config's layer layout) to start from, or None when the workdir holds checkpoints
    (the run resumes from them); head: "reused" | "fresh" (BERT MLM head) | "tied" | "own" (decoders) |
    "resumed"."""

    config: ml_collections.ConfigDict
    tokenizer: object
    params: dict | None
    head: str


def has_checkpoints(workdir: Path) -> bool:
    """Whether ``workdir/checkpoints`` holds a checkpoint step (then the run resumes from the workdir)."""
    folder = Path(workdir) / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _check_same_source(spec: str, workdir: Path) -> None:
    path = Path(workdir) / "config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text()).get("init_from", "")
    if saved != spec:
        raise ConfigError(f"{workdir} holds a run with init_from={saved!r}, not {spec!r}; use a new --workdir "
                          f"(or the same init_from to resume it)")


def _kind_error(objective: str, kind: str, spec: str) -> ConfigError:
    if objective == "mlm":
        return ConfigError(f"objective=mlm needs a BERT source but init_from={spec} is a {kind} model (causal); "
                           f"continue it with objective=clm (configs/gpt_clm_tiny.py or llama_clm_tiny.py)")
    return ConfigError(f"objective=clm needs a gpt or llama source but init_from={spec} is a {kind} model "
                       f"(an encoder); continue it with objective=mlm (configs/adapt_mlm.py)")


def resolve_config(config, pre: Pretrained, spec: str, given=()) -> ml_collections.ConfigDict:
    """``config`` with ``model`` and ``data.tokenizer`` taken from ``pre``. given: dotted fields the user set
    explicitly (CLI overrides), compared with the source even when equal to a default. Raises ConfigError
    (one line naming the field and the fix) on an objective that does not fit the source's kind, a model
    field that contradicts the source, or a tokenizer setting other than the source's."""
    kind = pre.model.kind
    if kind not in OBJECTIVE_KINDS[config.objective]:
        raise _kind_error(config.objective, kind, spec)
    base = pretrain_config(config.objective, kind)  # what "left at the default" means
    source = dataclasses.asdict(pre.model)
    for field in ARCHITECTURE:
        if field not in config.model:
            continue
        value = config.model[field]
        set_here = f"model.{field}" in given or field not in base.model or value != base.model[field]
        if set_here and value != source[field]:
            raise ConfigError(f"model.{field}={value!r} contradicts init_from={spec}, whose {field} is "
                              f"{source[field]!r}: continued pretraining keeps the source's architecture; drop "
                              f"the setting (configs/adapt_mlm.py sets none) or set it to {source[field]!r}")
    # The source's own tokenizer settings (a tljax run's: those it was trained with), recorded unchanged.
    recorded = dict(base.data.tokenizer, kind="wordpiece" if kind == "bert" else "bpe", vocab_size=len(pre.tokenizer))
    recorded.update({k: v for k, v in (pre.config.get("data", {}).get("tokenizer") or {}).items() if k in NEW_TOKENIZER})
    tokenizer_cfg = config.data.tokenizer
    for field in NEW_TOKENIZER:
        value = tokenizer_cfg[field]
        set_here = f"data.tokenizer.{field}" in given or value != base.data.tokenizer[field]
        if set_here and value != recorded[field]:
            raise ConfigError(f"data.tokenizer.{field}={value!r} is a setting for training a new tokenizer, but "
                              f"continued pretraining keeps the tokenizer of init_from={spec} (no new vocabulary; "
                              f"its {field} is {recorded[field]!r}); drop the setting")
    if tokenizer_cfg.path:
        other = tok_lib.load_tokenizer(tokenizer_cfg.path)
        if other.get_vocab() != pre.tokenizer.get_vocab():
            raise ConfigError(f"data.tokenizer.path={tokenizer_cfg.path} is not the tokenizer of init_from={spec} "
                              f"({len(other)} vs {len(pre.tokenizer)} tokens, or other ids); continued pretraining "
                              f"keeps the source's tokenizer: set data.tokenizer.path=''")
    if config.data.seq_len > pre.model.max_len:
        raise ConfigError(f"data.seq_len={config.data.seq_len} exceeds the max_len {pre.model.max_len} of "
                          f"init_from={spec}; set --config.data.seq_len={pre.model.max_len} or lower")
    model = dict(source, **{f: config.model[f] for f in RUNTIME if f in config.model})
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.model = ml_collections.ConfigDict(model)
        resolved.data.tokenizer = ml_collections.ConfigDict(dict(
            path=tokenizer_cfg.path, **{k: recorded[k] for k in NEW_TOKENIZER}))
    return resolved


def start_params(pre: Pretrained, config) -> dict:
    """The source's LanguageModel params in the layout of ``config.model`` (stacked when scan_layers),
    checked against the model's parameter paths and shapes. A pooler the source lacks is left out (it
    starts fresh). Raises PretrainedError listing what does not fit."""
    cfg = model_config(config.model)
    params = stack_layers(pre.params) if cfg.scan_layers else pre.params
    dummy = jnp.ones((1, min(8, cfg.max_len)), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(LanguageModel(cfg).init(jax.random.key(0), dummy))["params"])
    want = {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(shapes).items()}
    have = {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(params).items()}
    problems = [f"{'/'.join(p)}: model {want.get(p, 'none')} vs source {have.get(p, 'none')}"
                for p in sorted(set(want) | set(have)) if want.get(p) != have.get(p)
                and not (p[0] == "pooler" and p not in have)]
    if problems:
        raise PretrainedError(f"the weights of the source do not fit its own architecture ({len(problems)} "
                              f"parameter(s): {'; '.join(problems[:4])}); is the checkpoint complete?")
    return params


def load(config, workdir: Path, given=()) -> Start:
    """The starting point of pretraining ``config`` (``init_from`` set) in ``workdir``: resolved config,
    tokenizer and, unless the workdir holds checkpoints to resume from, the starting params. Reads nothing
    it writes; raises ConfigError / PretrainedError before anything is written."""
    spec = config.init_from
    workdir = Path(workdir)
    _check_same_source(spec, workdir)
    resuming = distributed.lead_decides(has_checkpoints(workdir))  # one answer for all processes, as engine.restore
    # Resuming: the workdir's own config.json and tokenizer/ are the architecture and tokenizer (the
    # source's weights are not needed again, and the source may be gone).
    # The config is checked against the source's description before its weights are read (a refusal costs
    # no 90 MB read and prints nothing but its one line).
    pre = load_run(workdir, with_weights=False) if resuming else init_from_lib.resolve(spec, with_weights=False)
    resolved = resolve_config(config, pre, spec, given)
    if resuming:
        return Start(resolved, pre.tokenizer, None, "resumed")
    pre = init_from_lib.resolve(spec)
    params = start_params(pre, resolved)
    kind = pre.model.kind
    if kind == "bert":
        head = "reused" if pre.config.get("lm_head_pretrained", True) else "fresh"
    else:
        head = "tied" if pre.model.tie_embeddings else "own"
    if head == "fresh":
        log(f"note: {spec} has no MLM head: the run starts a fresh one (dense + LayerNorm transform, decoder "
            f"tied to the word embeddings, bias 0). Its first steps' loss is near ln(V) = "
            f"{math.log(pre.model.vocab_size):.1f} and falls as the head is learned, so part of the budget goes "
            f"to the head (docs/pretraining.md)")
    else:
        log(f"starting from {spec}: its tokenizer ({len(pre.tokenizer):,} tokens), architecture and LM head "
            f"({head})")
    return Start(resolved, pre.tokenizer, params, head)
