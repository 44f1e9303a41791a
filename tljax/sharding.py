"""Device mesh and logical-axis sharding rules.

Parameters and activations carry logical axis names; ``config.sharding_rules`` maps each name to a mesh
axis (or None = replicated). The same code runs on one CPU device and on a multi-host pod: only the mesh
shape and the rules change.
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import jax
import numpy as np
import flax.linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# (logical name, mesh axis or axes). Parameters: ``embed`` is split over ``fsdp`` (ZeRO-3 style) and the
# matmul-inner dimensions (``heads``, ``mlp``, ``vocab``) over ``tensor`` (Megatron style). Activations
# use ``act_embed`` so that their hidden dimension is never split over the batch's own axes.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # key/value heads of grouped-query attention (Llama)
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("kv", None),
    ("embed_out", None),
    ("pos", None),
    ("types", None),
    ("length", None),
    ("act_embed", None),
    ("classes", None),
    ("layers", None),  # the stacked-layer axis of scan_layers: every device holds all layers of its shard
)


def make_mesh(axis_names: Sequence[str], shape: Sequence[int], devices=None) -> Mesh:
    """A mesh over all (global) devices. ``shape`` may hold one -1 meaning "the remaining devices".

    Raises ValueError with the fix when the shape does not fit the number of devices.
    """
    devices = jax.devices() if devices is None else devices
    shape = list(shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh.shape {tuple(shape)} and mesh.axes {tuple(axis_names)} differ in length")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh.shape {tuple(shape)} has more than one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if known == 0 or len(devices) % known:
            raise ValueError(f"mesh.shape {tuple(shape)} does not divide the {len(devices)} available devices; "
                             f"choose sizes whose product divides {len(devices)}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh.shape {tuple(shape)} needs {math.prod(shape)} devices but {len(devices)} "
                         f"are available; set --config.mesh.shape so the product is {len(devices)} (or use -1)")
    # Explicit Auto axis types: tensor-parallel matmuls need them (jax.make_mesh defaults to Explicit).
    return Mesh(np.asarray(devices).reshape(shape), tuple(axis_names))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
    """Make ``mesh`` and the logical ``rules`` current, so that activation constraints
    (``nn.with_logical_constraint``) inside traced model code take effect."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for_mesh(rules, mesh)):
        yield


def rules_from_config(rules) -> tuple[tuple[str, object], ...]:
    """Normalise config rules (lists from the command line) into a tuple of (name, axes) pairs."""
    out = []
    for name, axes in rules:
        out.append((name, tuple(axes) if isinstance(axes, list) else axes))
    return tuple(out)


def rules_for_mesh(rules, mesh: Mesh) -> list:
    """The rules with mesh axes that ``mesh`` lacks removed (a mesh of only ``("data",)`` is valid)."""
    out = []
    for name, axes in rules:
        if isinstance(axes, tuple):
            kept = tuple(a for a in axes if a in mesh.axis_names)
            axes = kept if len(kept) > 1 else (kept[0] if kept else None)
        elif axes is not None and axes not in mesh.axis_names:
            axes = None
        out.append((name, axes))
    return out


def logical_to_sharding(logical_specs, mesh: Mesh, rules) -> object:
    """Tree of logical PartitionSpecs -> tree of NamedShardings on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules_for_mesh(rules, mesh))


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, T, ...] batch: the batch dimension over the rules' ``batch`` axes."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules_for_mesh(rules, mesh))
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())

