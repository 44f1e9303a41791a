"""Scan over layers (``model.scan_layers=True``): one ``nn.scan`` replaces ``layer_0 … layer_{L-1}``.

The compiled step then holds one layer body run L times, so compile time no longer grows with depth.
Parameter layout: every layer parameter is stacked along a new leading axis of length L under
``<backbone>/layers/…`` (``encoder/layers/attention/query/kernel`` [L, H, N, D]), with the logical axis
name ``layers`` (replicated by the default rules: each device holds all layers of its shard).

Everything that keys off per-layer paths — transfer layer groups, freezing, layer-wise rates, Hugging Face
export — sees the unscanned layout: ``unstack_layers`` converts a scanned checkpoint exactly (loading a run
for fine-tuning does it, see ``tljax.pretrained``) and ``stack_layers`` converts back.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from tljax.models.layers import TransformerConfig, TransformerLayer, remat_layer
from tljax.models.llama import LlamaLayer

BACKBONES = ("encoder", "decoder")
_LAYER = re.compile(r"layer_(\d+)$")


class ScanStep(TransformerLayer):
    """TransformerLayer in ``nn.scan``'s body form: (x [B, T, H], mask, deterministic) -> (x, None)."""

    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool):
        return super().__call__(x, mask, deterministic), None


class LlamaScanStep(LlamaLayer):
    """LlamaLayer in ``nn.scan``'s body form: (x [B, T, H], mask, deterministic, rotary) -> (x, None)."""

    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool, rotary):
        return super().__call__(x, mask, deterministic, rotary), None


def scanned_layers(cfg: TransformerConfig) -> type[nn.Module]:
    """The module class of the whole stack: ``(x [B, T, H], mask, deterministic[, rotary]) -> (x, None)``
    (rotary (cos, sin) for llama), with stacked parameters and a fresh init / dropout key per layer."""
    llama = cfg.kind == "llama"
    return nn.scan(remat_layer(cfg, LlamaScanStep if llama else ScanStep), variable_axes={"params": 0},
                   split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * (3 if llama else 2),
                   length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})


def unstack_layers(params: dict) -> dict:
    """Scanned params (``<backbone>/layers/…`` with leading axis L) -> per-layer params
    (``<backbone>/layer_i/…``). Other subtrees are returned as they are; unscanned params unchanged."""
    out = dict(params)
    for name in BACKBONES:
        if name in out and "layers" in out[name]:
            backbone = dict(out[name])
            stacked = backbone.pop("layers")
            num_layers = jax.tree.leaves(stacked)[0].shape[0]
            for i in range(num_layers):
                backbone[f"layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
            out[name] = backbone
    return out


def stack_layers(params: dict) -> dict:
    """Per-layer params (``<backbone>/layer_i/…``) -> scanned params (``<backbone>/layers/…``, leading
    axis L); the inverse of ``unstack_layers``. Arrays stay on the host if they are numpy arrays."""
    out = dict(params)
    for name in BACKBONES:
        if name not in out:
            continue
        backbone = dict(out[name])
        indices = sorted(int(m.group(1)) for k in backbone if (m := _LAYER.match(k)))
        if not indices:
            continue
        if indices != list(range(len(indices))):
            raise ValueError(f"{name} has layers {indices}; stacking needs layer_0 … layer_{len(indices) - 1}")
        layers = [backbone.pop(f"layer_{i}") for i in indices]
        stack = lambda *xs: (np.stack if all(isinstance(x, np.ndarray) for x in xs) else jnp.stack)(xs)
        backbone["layers"] = jax.tree.map(stack, *layers)
        out[name] = backbone
    return out
