"""Run configuration: ml-collections files (``file.py`` or ``file.py:arg``) with ``--config.a.b=v`` overrides.

A run stores its resolved config in ``workdir/config.json``; resuming compares the fields that change what
a checkpoint means (model shape, objective, tokenizer, sequence length) and refuses on a difference.
"""
from __future__ import annotations

import ast
import io
import importlib.util
import json
import numbers
import tokenize
from pathlib import Path

import ml_collections

from tljax.utils import write_json

# Fields whose change makes an existing checkpoint meaningless for this run.
RESUME_CRITICAL = ("objective", "init_from", "model", "data.seq_len", "data.tokenizer")
# Within those, fields that only change how the step computes (parameters stay float32 and keep their
# paths): a run may resume with another precision or remat policy, e.g. to fit memory.
RESUME_FREE = ("model.dtype", "model.remat", "model.attention_impl")
# Fields added after runs were saved without them: absent means this value, the old behaviour.
ADDED_FIELDS = {"model.scan_layers": False, "model.num_kv_heads": 0, "model.rope_theta": 10000.0,
                "model.rope_scaling": "", "model.tie_embeddings": True, "init_from": ""}


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and the fix."""


def to_dict(config) -> dict:
    return json.loads(config.to_json_best_effort()) if isinstance(config, ml_collections.ConfigDict) else config


_ABSENT = object()


def _get(tree: dict, dotted: str, absent=None):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return absent
        tree = tree[part]
    return tree


def flatten(tree, prefix=""):
    """(dotted.path, leaf) pairs of a nested dict."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, tree


def resume_differences(saved: dict, current: dict) -> list[str]:
    """The resume-critical fields that differ, as ``field: saved -> current`` strings."""
    diffs = []
    for key in RESUME_CRITICAL:
        saved_value, current_value = _get(saved, key, _ABSENT), _get(current, key, _ABSENT)
        # Absent: written before the field existed (ADDED_FIELDS gives the value it then had).
        old = {} if saved_value is _ABSENT else dict(flatten(saved_value, key))
        new = {} if current_value is _ABSENT else dict(flatten(current_value, key))
        for field in sorted(set(old) | set(new) | ({key} & set(ADDED_FIELDS))):
            if field in RESUME_FREE:
                continue
            for side in (old, new):
                if field not in side and field in ADDED_FIELDS:
                    side[field] = ADDED_FIELDS[field]
            if old.get(field) != new.get(field):
                diffs.append(f"{field}: {old.get(field)!r} -> {new.get(field)!r}")
    return diffs


def load_config_file(spec: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config([ARG])`` of an ml-collections config file: ``spec`` is ``FILE.py`` or ``FILE.py:ARG``
    (what ``--config`` takes). The one loader of config files (CLI, ``--help``, the experiment's files).
    A missing file, or a file whose get_config raises, is a ConfigError naming it."""
    spec = str(spec)
    path_text, _, spec_arg = spec.partition(":") if arg is None else (spec, "", arg)
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"config file {path} {'is a directory' if path.is_dir() else 'does not exist'}; "
                          f"give a .py config file such as configs/bert_mlm_tiny.py")
    module_spec = importlib.util.spec_from_file_location(f"_tljax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        config = module.get_config(spec_arg) if spec_arg else module.get_config()
    except Exception as e:  # the file's own error, e.g. an unknown ARG
        lines = [l for l in str(e).strip().splitlines() if l.strip()]
        raise ConfigError(f"cannot load --config {spec}: {type(e).__name__}: {lines[-1] if lines else ''}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}'s get_config() returned {type(config).__name__}, not an ml_collections "
                          f"ConfigDict")
    return config


def save_config(config, workdir: Path) -> None:
    """``workdir/config.json``: the resolved config as strict JSON, written atomically."""
    write_json(Path(workdir) / "config.json", to_dict(config), sort_keys=True)


def check_resume(config, workdir: Path) -> None:
    """Raise ConfigError if ``workdir`` holds a run whose critical config differs from ``config``."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return
    diffs = resume_differences(json.loads(path.read_text()), to_dict(config))
    if diffs:
        raise ConfigError(f"{workdir} holds a run with a different config ({'; '.join(diffs[:4])}"
                          f"{' …' if len(diffs) > 4 else ''}); use a new --workdir or the same config")


# ----------------------------------------------------------------------------------------------------
# Validation: every field a user can set wrongly, checked before a run writes anything
# ----------------------------------------------------------------------------------------------------
class Rule:
    """A check of one field: ``test(value) -> bool`` and what a valid value is (``need``)."""

    def __init__(self, need: str, test):
        self.need, self.test = need, test

    def __call__(self, value) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


POS_INT = Rule("an integer > 0", lambda v: _is_int(v) and v > 0)
NONNEG_INT = Rule("an integer >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE = Rule("a number > 0", lambda v: _is_num(v) and v > 0)
NONNEG = Rule("a number >= 0", lambda v: _is_num(v) and v >= 0)
FRACTION = Rule("a fraction in (0, 1]", lambda v: _is_num(v) and 0 < v <= 1)
PROBABILITY = Rule("a number in [0, 1]", lambda v: _is_num(v) and 0 <= v <= 1)
BELOW_ONE = Rule("a number in [0, 1)", lambda v: _is_num(v) and 0 <= v < 1)


def _is_regex(v) -> bool:
    import re
    try:
        return isinstance(v, str) and re.compile(v) is not None
    except re.error:
        return False


def one_of(*choices) -> Rule:
    return Rule("one of " + ", ".join(repr(c) for c in choices), lambda v: v in choices)


def rule_error(field: str, value, rule: Rule) -> str:
    """The one-line message for ``field=value`` breaking ``rule``: names the field and the valid values."""
    shown = list(value) if isinstance(value, tuple) else value
    if rule.need.startswith("one of"):
        return f"{field}={shown!r} unknown; use {rule.need}"
    return f"{field}={shown!r} is invalid; set --config.{field} to {rule.need}"


_MODEL_RULES = {
    "model.kind": one_of("bert", "gpt", "llama"), "model.vocab_size": NONNEG_INT, "model.hidden_size": POS_INT,
    "model.num_layers": POS_INT, "model.num_heads": POS_INT, "model.mlp_dim": POS_INT, "model.max_len": POS_INT,
    "model.type_vocab_size": POS_INT, "model.dropout": BELOW_ONE, "model.attention_dropout": BELOW_ONE,
    "model.activation": one_of("gelu", "gelu_new", "relu", "silu"), "model.layer_norm_eps": POSITIVE,
    "model.init_std": POSITIVE, "model.dtype": one_of("float32", "bfloat16", "float16"),
    "model.attention_impl": one_of(None, "xla", "cudnn"), "model.remat": one_of("none", "full", "dots"),
    "model.num_kv_heads": NONNEG_INT, "model.rope_theta": POSITIVE,
}
_OPTIMIZER_RULES = {
    "train.steps": POS_INT, "train.lr": POSITIVE, "train.warmup_steps": NONNEG_INT,
    "train.schedule": one_of("cosine", "linear"), "train.end_lr_ratio": PROBABILITY,
    "train.weight_decay": NONNEG, "train.b1": BELOW_ONE, "train.b2": BELOW_ONE, "train.eps": POSITIVE,
    "train.grad_clip": NONNEG, "train.log_every": POS_INT, "train.eval_every": POS_INT,
}
PRETRAIN_RULES = {
    "objective": one_of("mlm", "clm"), "seed": NONNEG_INT,
    "init_from": Rule("'' (from scratch), a pretraining workdir, hf:FOLDER, hf:minilm or gguf:FILE",
                      lambda v: isinstance(v, str) and v.strip() == v and v != "none"), **_MODEL_RULES,
    "mlm.rate": FRACTION, "mlm.mask_prob": PROBABILITY, "mlm.random_prob": PROBABILITY,
    "data.holdout": BELOW_ONE, "data.subsample": FRACTION, "data.seq_len": Rule("an integer >= 2",
                                                                                  lambda v: _is_int(v) and v >= 2),
    "data.batch_size": POS_INT, "data.tokenizer.kind": one_of("wordpiece", "bpe"),
    "data.tokenizer.vocab_size": Rule("an integer >= 100", lambda v: _is_int(v) and v >= 100),
    "data.tokenizer.train_fraction": FRACTION,
    **_OPTIMIZER_RULES, "train.eval_batches": POS_INT, "train.checkpoint_every": POS_INT,
    "train.keep_checkpoints": POS_INT, "train.run_steps": NONNEG_INT,
}
FINETUNE_RULES = {
    "strategy": one_of("features", "light", "full", "progressive", "lora"), "recipe": one_of("", "lpft", "setfit", "prompt_probe"),
    "prompt.normalize": one_of("sum", "mean"), "prompt.max_len": POS_INT, "prompt.batch_size": POS_INT,
    "prompt_probe.hidden": one_of(False, True),
    "lora.rank": POS_INT, "lora.alpha": POSITIVE, "lora.dropout": BELOW_ONE,
    "lora.targets": Rule("a non-empty tuple of regular expressions over kernel paths",
                         lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_regex(t) for t in v)),
    "setfit.pair_iterations": POS_INT, "self_training.rounds": NONNEG_INT,
    "self_training.threshold": PROBABILITY, "self_training.max_unlabeled": POS_INT, "probe.cv_folds": NONNEG_INT, "unfrozen_layers": NONNEG_INT,
    "unfreeze_every": POS_INT, "layer_lr_decay": FRACTION, "pooling": one_of("auto", "cls", "mean", "last"),
    "head_dropout": BELOW_ONE, "seed": NONNEG_INT, "overwrite": one_of(False, True),
    "probe.kind": one_of("logreg", "mlp"), "probe.mlp_hidden": POS_INT,
    "probe.c_grid": Rule("a non-empty tuple of numbers > 0",
                         lambda v: len(v) > 0 and all(_is_num(c) and c > 0 for c in v)),
    "data.num_labeled": NONNEG_INT, "data.validation_fraction": BELOW_ONE, "data.max_validation": NONNEG_INT,
    "data.max_len": POS_INT,
    "data.batch_size": POS_INT, **_OPTIMIZER_RULES, "train.patience": NONNEG_INT,
    "forgetting.sequences": POS_INT, "forgetting.batch_size": POS_INT,
}
WORD2VEC_RULES = {
    "model": one_of("skipgram", "cbow"), "dim": POS_INT, "window": POS_INT, "negatives": POS_INT,
    "min_count": POS_INT, "max_vocab": NONNEG_INT, "sample": NONNEG, "epochs": POS_INT, "lr": POSITIVE,
    "min_lr": NONNEG, "batch_size": POS_INT, "steps_per_call": POS_INT, "chunk_tokens": POS_INT,
    "table_size": POS_INT, "log_seconds": POSITIVE, "seed": NONNEG_INT,
}


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def check_rules(config, rules: dict, prefix: str = "") -> None:
    """Raise ConfigError naming the first field of ``config`` that breaks its rule (absent fields are
    skipped: configs written before a field existed)."""
    for field, rule in rules.items():
        value = _lookup(config, field)
        if value is not _MISSING and not rule(value):
            raise ConfigError(rule_error(prefix + field, value, rule))


def _check_mesh(mesh_cfg, prefix: str = "", batch_size: int | None = None, rules=None) -> None:
    """The mesh shape against its axes and the devices; with ``batch_size``, that the batch divides over
    the mesh axes the ``batch`` rule of ``rules`` splits it across."""
    axes, shape = tuple(mesh_cfg.axes), tuple(mesh_cfg.shape)
    if len(axes) != len(shape) or any(not _is_int(s) or (s < 1 and s != -1) for s in shape) or shape.count(-1) > 1:
        raise ConfigError(f"{prefix}mesh.shape={shape} is invalid: it must give one size >= 1 (or one -1 for the "
                          f"remaining devices) per axis of {prefix}mesh.axes={axes}; e.g. "
                          f"--config.{prefix}mesh.shape='({', '.join(['-1'] + ['1'] * (len(axes) - 1))})'")
    from tljax import sharding
    try:
        mesh = sharding.make_mesh(axes, shape)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if batch_size is None or rules is None:
        return
    split = dict(sharding.rules_from_config(rules)).get("batch")
    split = (split,) if isinstance(split, str) else tuple(split or ())
    shards = 1
    for axis in split:
        shards *= mesh.shape.get(axis, 1)
    if batch_size % shards:
        raise ConfigError(f"{prefix}data.batch_size={batch_size} does not divide over the {shards} batch shards of "
                          f"{prefix}mesh.shape={tuple(mesh.devices.shape)} ({' x '.join(split)}); use a multiple of "
                          f"{shards}, or another mesh")


def validate_pretrain(config) -> None:
    """Check every field of a ``tljax pretrain`` config (ranges, choices, agreements, the mesh against the
    devices) before anything is written; raises ConfigError naming the field and the fix."""
    check_rules(config, PRETRAIN_RULES)
    if (config.objective == "mlm") != (config.model.kind == "bert"):
        kind = "bert" if config.objective == "mlm" else "gpt"
        raise ConfigError(f"objective={config.objective!r} needs model.kind={kind}"
                          f"{'' if kind == 'bert' else ' or llama'}; set --config.model.kind={kind} "
                          f"(or start from the config file of the other objective)")
    if config.model.hidden_size % config.model.num_heads:
        raise ConfigError(f"model.hidden_size={config.model.hidden_size} is not divisible by model.num_heads="
                          f"{config.model.num_heads}; change one of them")
    if config.data.seq_len > config.model.max_len:
        raise ConfigError(f"data.seq_len={config.data.seq_len} exceeds model.max_len={config.model.max_len}; "
                          f"lower one or raise the other")
    if config.mlm.mask_prob + config.mlm.random_prob > 1:
        raise ConfigError(f"mlm.mask_prob + mlm.random_prob = {config.mlm.mask_prob + config.mlm.random_prob} "
                          f"exceeds 1; lower one of them")
    from tljax.data import sources
    sources.check_spec(config.data.source)
    if config.data.eval_source:
        sources.check_spec(config.data.eval_source)
    _check_mesh(config.mesh, batch_size=config.data.batch_size, rules=config.sharding_rules)


def validate_finetune(config, prefix: str = "") -> None:
    """Check every field of a ``tljax finetune`` config (``prefix``: where it sits in a larger config, e.g.
    "finetune." in ``tljax experiment``); raises ConfigError naming the field and the fix."""
    check_rules(config, FINETUNE_RULES, prefix)
    from tljax.data import labeled
    labeled.labeled_specs(config.data)  # name vs train/test files: one of them would be ignored
    try:
        labeled.check_budget_settings(config.data)  # the removed num_validation: never a silent change
    except labeled.SourceError as e:
        raise ConfigError(f"{prefix}{e}") from None
    recipe = config.get("recipe", "")
    if recipe in ("lpft", "setfit") and config.strategy == "features":
        raise ConfigError(f"{prefix}recipe={recipe} trains the encoder: use a gradient strategy (full, light, "
                          f"progressive) with it, or recipe='' for frozen features")
    if recipe == "prompt_probe":
        if config.strategy != "features":
            raise ConfigError(f"{prefix}recipe=prompt_probe fits a probe on frozen prompt scores: use "
                              f"--config.{prefix}strategy=features with it")
        if "{text}" not in config.prompt.prompt:
            raise ConfigError(f"{prefix}prompt.prompt={config.prompt.prompt!r} has no {{text}} placeholder for the "
                              f"text; e.g. --config.{prefix}prompt.prompt='Review: {{text}}\\nSentiment:'")
    if config.get("self_training", {}).get("rounds", 0) and not (config.strategy == "features" or recipe == "setfit"):
        raise ConfigError(f"{prefix}self_training.rounds needs a probe head: use strategy=features or "
                          f"recipe=setfit with it (or self_training.rounds=0)")
    _check_mesh(config.mesh, prefix, batch_size=config.data.batch_size, rules=config.sharding_rules)


def validate_word2vec(config) -> None:
    """Check every field of a ``tljax word2vec`` config; raises ConfigError naming the field and the fix."""
    check_rules(config, WORD2VEC_RULES)
    if config.min_lr > config.lr:
        raise ConfigError(f"min_lr={config.min_lr} exceeds lr={config.lr}; lower min_lr")


# ----------------------------------------------------------------------------------------------------
# Field documentation for --help: the end-of-line comments of the code that builds a config
# ----------------------------------------------------------------------------------------------------
def _call_name(node) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _target_path(node) -> str | None:
    """``c.data.tokenizer`` -> "data.tokenizer" (the root name, the config variable, dropped)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join(reversed(parts)) if isinstance(node, ast.Name) and parts else None


def field_docs(source: str, builders: dict | None = None) -> dict[str, str]:
    """{dotted field: one-line doc} from config-building ``source``: the comment at the end of the line
    where a field's value ends (``c.seed = 0  # doc`` or ``steps=300,  # doc`` inside ``dict(...)``), else a
    comment on the line just above its assignment. ``builders``: {function name: docs} whose docs apply
    under a field assigned that function's result (``c.finetune = finetune_config()``)."""
    comments, full_line = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                full_line.add(tok.start[0])
    docs: dict[str, str] = {}
    lines = source.splitlines()

    def value(path: str, node) -> None:
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name in (builders or {}):
                docs.update({f"{path}.{k}": v for k, v in builders[name].items()})
            elif name == "ConfigDict" and node.args:
                value(path, node.args[0])
            elif name == "dict":
                keywords = [kw for kw in node.keywords if kw.arg is not None]
                for i, kw in enumerate(keywords):
                    line = kw.value.end_lineno
                    last_on_line = i + 1 == len(keywords) or keywords[i + 1].value.end_lineno != line
                    # A comment after a trailing comma documents every field of its line
                    # (``train="", test="",  # ...``); one after a closing bracket, the last field only.
                    if line in comments and line not in full_line and (last_on_line or lines[line - 1].split(
                            "#")[0].rstrip().endswith(",")):
                        docs[f"{path}.{kw.arg}"] = comments[line]
                    value(f"{path}.{kw.arg}", kw.value)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            path = _target_path(node.targets[0])
            if path is None:
                continue
            end, above = node.end_lineno, node.lineno - 1
            if end in comments and end not in full_line and not isinstance(node.value, ast.Call):
                docs[path] = comments[end]
            elif above in full_line:
                docs[path] = comments[above]
            value(path, node.value)
    return docs


def builder_docs() -> dict[str, dict[str, str]]:
    """{builder function name: field docs} of ``tljax.defaults``' config builders."""
    import inspect
    from tljax import defaults
    source = inspect.getsource(defaults)
    docs = {}
    tree = ast.parse(source)
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef):
            # Builders defined above document the nodes they fill (finetune_config's prompt = prompt_config()).
            docs[fn.name] = field_docs(ast.get_source_segment(source, fn, padded=True) or "", dict(docs))
    return docs
