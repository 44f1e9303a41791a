"""Per-device memory of a compiled step, as XLA's buffer assignment reports it, plus the state's share.

``compiled.memory_analysis()`` describes the partitioned (per-device) program: arguments, outputs,
temporaries (activations kept for the backward pass, gradients, workspace) and the bytes that outputs
reuse from donated arguments (alias). Backends may leave fields out (None here); the state's per-device
bytes come from the shardings alone, so they are always known.
"""
from __future__ import annotations

import math

import jax
import numpy as np

# CompiledMemoryStats fields reported, under shorter names.
_FIELDS = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
           "alias_bytes": "alias_size_in_bytes", "temp_bytes": "temp_size_in_bytes",
           "code_bytes": "generated_code_size_in_bytes", "peak_bytes": "peak_memory_in_bytes"}


def step_memory(jitted_fn, *args) -> dict:
    """Lower and compile ``jitted_fn`` (a ``jax.jit`` function) for ``args`` (arrays or
    ShapeDtypeStructs) and return its per-device bytes {argument, output, alias, temp, code, peak}_bytes,
    each an int or None where the backend does not report it. The compilation is cached: a later call of
    ``jitted_fn`` with the same shapes, shardings and trace context (mesh, logical rules) reuses it."""
    compiled = jitted_fn.lower(*args).compile()
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):  # a backend without the analysis (XLA's UNIMPLEMENTED)
        stats = None
    out = {}
    for name, field in _FIELDS.items():
        value = getattr(stats, field, None) if stats is not None else None
        out[name] = None if value is None or value < 0 else int(value)
    return out


def bytes_per_device(tree) -> int:
    """Bytes of ``tree`` that each device holds. Leaves: jax.Arrays or ShapeDtypeStructs with a sharding
    (JAX shards evenly, so every device holds the same shard shape); a leaf without one counts whole."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def total_bytes(tree) -> int:
    """Bytes of ``tree``'s global (unsharded) arrays."""
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def global_batch_spec(rows: np.ndarray, global_batch: int, sharding) -> jax.ShapeDtypeStruct:
    """The [global_batch, ...] array that ``jax.make_array_from_process_local_data(sharding, rows[:b])``
    builds from host rows [N, ...], as a ShapeDtypeStruct: lowering needs no data."""
    return jax.ShapeDtypeStruct((global_batch,) + rows.shape[1:], jax.dtypes.canonicalize_dtype(rows.dtype),
                                sharding=sharding)


def train_step_memory(jitted_step, state, *batch) -> dict:
    """``step_memory`` of ``jitted_step(state, *batch)`` plus the TrainState's parameter and optimizer
    bytes per device and in total. Call it inside the mesh / logical-rules context of the training loop."""
    out = step_memory(jitted_step, state, *batch)
    out.update(params_bytes_per_device=bytes_per_device(state.params),
               opt_state_bytes_per_device=bytes_per_device(state.opt_state),
               params_bytes_total=total_bytes(state.params), opt_state_bytes_total=total_bytes(state.opt_state))
    return out


def residual_bytes(fn, *args) -> int:
    """Bytes that reverse-mode autodiff of the scalar ``fn(*args)`` (differentiated in the first argument)
    keeps from the forward pass for the backward pass: saved activations and the parameters used there,
    counted per residual. Abstract (``jax.eval_shape``): nothing runs and no backend schedules it, so this
    is what remat and precision ask for, before XLA decides how to lay the buffers out."""
    residuals = jax.eval_shape(lambda first, *rest: jax.vjp(lambda a: fn(a, *rest), first)[1], *args)
    return total_bytes(residuals)


def describe(memory: dict) -> str:
    """One log line: MB per device of the state and of the compiled step's buffers."""
    mb = lambda key: "n/a" if memory.get(key) is None else f"{memory[key] / 2**20:.1f}"
    return (f"memory per device (MiB): params {mb('params_bytes_per_device')}, optimizer "
            f"{mb('opt_state_bytes_per_device')}; compiled step: arguments {mb('argument_bytes')}, outputs "
            f"{mb('output_bytes')} (aliased {mb('alias_bytes')}), temporaries {mb('temp_bytes')}")
