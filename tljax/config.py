"""Run configuration: ml-collections files (``file.py`` or ``file.py:arg``) with ``--config.a.b=v`` overrides.

A run stores its resolved config in ``workdir/config.json``; resuming compares the fields that change what
a checkpoint means (model shape, objective, tokenizer, sequence length) and refuses on a difference.
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_collections

# Fields whose change makes an existing checkpoint meaningless for this run.
RESUME_CRITICAL = ("objective", "model", "data.seq_len", "data.tokenizer")
# Within those, fields that only change how the step computes (parameters stay float32 and keep their
# paths): a run may resume with another precision or remat policy, e.g. to fit memory.
RESUME_FREE = ("model.dtype", "model.remat", "model.attention_impl")
# Fields added after runs were saved without them: absent means this value, the old behaviour.
ADDED_FIELDS = {"model.scan_layers": False, "model.num_kv_heads": 0, "model.rope_theta": 10000.0,
                "model.rope_scaling": "", "model.tie_embeddings": True}


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and the fix."""


def to_dict(config) -> dict:
    return json.loads(config.to_json_best_effort()) if isinstance(config, ml_collections.ConfigDict) else config


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
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
        old, new = dict(flatten(_get(saved, key), key)), dict(flatten(_get(current, key), key))
        for field in sorted(set(old) | set(new)):
            if field in RESUME_FREE:
                continue
            if field not in old and field in ADDED_FIELDS:
                old[field] = ADDED_FIELDS[field]
            if old.get(field) != new.get(field):
                diffs.append(f"{field}: {old.get(field)!r} -> {new.get(field)!r}")
    return diffs


def save_config(config, workdir: Path) -> None:
    path = Path(workdir) / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def check_resume(config, workdir: Path) -> None:
    """Raise ConfigError if ``workdir`` holds a run whose critical config differs from ``config``."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return
    diffs = resume_differences(json.loads(path.read_text()), to_dict(config))
    if diffs:
        raise ConfigError(f"{workdir} holds a run with a different config ({'; '.join(diffs[:4])}"
                          f"{' …' if len(diffs) > 4 else ''}); use a new --workdir or the same config")
