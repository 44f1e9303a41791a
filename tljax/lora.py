"""Low-rank adapters (LoRA) on regex-selected kernels, for every model family, without touching the modules.

The adapters are their own parameter subtree next to the model's, mirroring the kernels they adapt::

    params = {"encoder": {...}, "classifier": {...},
              "lora": {"encoder": {"layer_0": {"attention": {"query": {"kernel": {"a": [in, r], "b": [r, out]}}}}}}}

A task applies the model to ``merge(params, scale)``: every adapted kernel W becomes
``W + scale * reshape(A @ B, W.shape)`` with ``scale = alpha / rank``. B starts at zero, so step 0 is the
base model exactly. The base is frozen by the parameter policy (``policy.strategy_rules("lora", ...)``:
``set_to_zero``, no optimizer state); only A, B and the classifier head train. The parameters a run keeps
(``merge`` applied once more) are plain kernels: prediction and export see an ordinary model.

Kernel layout (the in/out split of a DenseGeneral kernel), from the kernel's logical axis names: leading
``layers`` axes (scanned layers) are batch axes, one adapter per layer; of the rest, when the first axis is
``embed`` it is the input and the others are the output (``query`` [embed, heads, kv] -> in H, out heads·kv);
otherwise the last axis is the output and the others are the input (``out`` [heads, kv, embed] -> in
heads·kv, out H; ``mlp/down`` [mlp, embed] -> in mlp, out H). Kernels without names: the first axis is the input.

``lora.dropout`` p: at each training step, each input row of A is dropped with probability p (and the
kept ones scaled by 1/(1-p)), the same rows for every token of the batch: the form of LoRA's input dropout
that keeps the adapter mergeable into the kernel.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from tljax.config import ConfigError

KEY = "lora"  # the adapters' subtree in params
DEFAULT_TARGETS = (r"attention/(query|value)/kernel$",)  # q and v projections, as in the LoRA paper
MLP_TARGETS = (r"mlp/[^/]+/kernel$",)  # add these for the MLP (BERT intermediate/output, Llama gate/up/down)
BACKBONES = ("encoder", "decoder")  # adapters only inside the pretrained backbone, never on the new head


@dataclasses.dataclass(frozen=True)
class KernelSplit:
    """An adapted kernel: its shape [*batch, *in, *out] and how many leading axes are batch / input."""

    shape: tuple[int, ...]
    batch_axes: int
    in_axes: int

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.shape[:self.batch_axes]

    @property
    def fan_in(self) -> int:
        return math.prod(self.shape[self.batch_axes:self.batch_axes + self.in_axes])

    @property
    def fan_out(self) -> int:
        return math.prod(self.shape[self.batch_axes + self.in_axes:])


def split_of(shape: Sequence[int], names: Sequence[str | None] | None) -> KernelSplit:
    """The batch / input / output axes of a kernel of ``shape`` with logical axis ``names`` (rule above)."""
    shape = tuple(int(s) for s in shape)
    names = tuple(names) if names else (None,) * len(shape)
    batch = 0
    while batch < len(names) and names[batch] == "layers":
        batch += 1
    rest = names[batch:]
    if len(rest) < 2:
        raise ConfigError(f"lora: a kernel of shape {shape} has fewer than 2 non-layer axes: not a projection")
    n_in = 1 if rest[0] in ("embed", None) else len(rest) - 1
    return KernelSplit(shape, batch, n_in)


def plan(boxed_params, targets: Sequence[str]) -> dict[tuple[str, ...], KernelSplit]:
    """{kernel path: KernelSplit} of the backbone kernels whose ``/``-joined path matches a regex of
    ``targets`` (``re.search``). ``boxed_params``: the model's init output (arrays or ShapeDtypeStructs,
    boxed with logical axis names). Raises ConfigError for a bad regex or when nothing matches (listing
    some kernel paths to choose from)."""
    if isinstance(targets, str) or not len(targets):
        raise ConfigError(f"lora.targets={targets!r} must be a non-empty tuple of regexes, e.g. "
                          f"--config.lora.targets='{DEFAULT_TARGETS!r}'")
    compiled = []
    for rx in targets:
        try:
            compiled.append(re.compile(str(rx)))
        except re.error as e:
            raise ConfigError(f"lora.targets: bad regular expression {rx!r} ({e})") from None
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed_params))
    shapes = traverse_util.flatten_dict(nn.meta.unbox(boxed_params))
    kernels = [p for p in shapes if p[0] in BACKBONES and p[-1] == "kernel"]
    chosen = {}
    for path in kernels:
        if any(rx.search("/".join(path)) for rx in compiled):
            spec = specs.get(path)
            chosen[path] = split_of(shapes[path].shape, tuple(spec) if spec is not None and len(spec) else None)
    if not chosen:
        shown = ", ".join("/".join(p) for p in kernels[:6])
        raise ConfigError(f"lora.targets={tuple(targets)!r} match no kernel of the model's backbone; its kernels "
                          f"are e.g. {shown}")
    return chosen


def init(splits: dict[tuple[str, ...], KernelSplit], rank: int, rng: jax.Array) -> dict:
    """The adapters' tree (nested like the kernels, leaves {"a": [*batch, in, rank], "b": [*batch, rank, out]}
    float32): A ~ N(0, 1/in) (the variance of a fan-in initialisation), B = 0."""
    flat = {}
    for i, (path, s) in enumerate(sorted(splits.items())):
        a = jax.random.normal(jax.random.fold_in(rng, i), (*s.batch_shape, s.fan_in, rank), jnp.float32)
        flat[path + ("a",)] = a / math.sqrt(s.fan_in)
        flat[path + ("b",)] = jnp.zeros((*s.batch_shape, rank, s.fan_out), jnp.float32)
    return traverse_util.unflatten_dict(flat)


def merge(params: dict, scale: float, rng: jax.Array | None = None, dropout: float = 0.0) -> dict:
    """``params`` without the ``lora`` subtree, each adapted kernel W [*batch, *in, *out] replaced by
    ``W + scale * reshape(A @ B, W.shape)`` (in W's dtype). With ``rng`` and ``dropout`` p > 0: A's input
    rows dropped with probability p (module docstring). Params without adapters are returned as they are."""
    if KEY not in params:
        return params
    base = traverse_util.flatten_dict({k: v for k, v in params.items() if k != KEY})
    adapters = traverse_util.flatten_dict(params[KEY])
    kernel_paths = sorted({p[:-1] for p in adapters})
    for i, path in enumerate(kernel_paths):
        a, b, kernel = adapters[path + ("a",)], adapters[path + ("b",)], base[path]
        if rng is not None and dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - dropout, a.shape[:-1])
            a = jnp.where(keep[..., None], a / (1.0 - dropout), 0.0)
        delta = scale * jnp.matmul(a, b)  # [*batch, in, out]
        base[path] = kernel + delta.reshape(kernel.shape).astype(kernel.dtype)
    return traverse_util.unflatten_dict(base)


def merge_host(params: dict, scale: float) -> dict:
    """``merge`` on host (numpy) trees: the plain parameters a run keeps and exports."""
    return jax.tree.map(np.asarray, jax.device_get(jax.jit(lambda p: merge(p, scale))(params)))


def count(params: dict) -> int:
    """Number of adapter parameters in ``params`` (0 without adapters)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params.get(KEY, {}))))


def scale_of(lora_cfg) -> float:
    """alpha / rank."""
    return float(lora_cfg.alpha) / int(lora_cfg.rank)
