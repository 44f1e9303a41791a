"""Train state created directly in its sharded layout.

``jax.eval_shape`` gives the state's shapes and the parameters' logical axis names without allocating;
the rules turn those into NamedShardings; ``jax.jit(init, out_shardings=…)`` then materialises every array
on the devices that own it (no full copy on one host first).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec

from tljax import sharding as shd


class TrainState(struct.PyTreeNode):
    """step: int32 []; params: the model's parameter tree; opt_state: optax state; rng: uint32 [2]."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def param_shardings(init_params: Callable[[jax.Array], Any], mesh, rules):
    """(abstract unboxed params, NamedSharding tree) for ``init_params(rng)`` that returns boxed params."""
    boxed = jax.eval_shape(init_params, jax.random.key(0))
    logical = nn.get_partition_spec(boxed)
    return nn.meta.unbox(boxed), shd.logical_to_sharding(logical, mesh, rules)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_params, params_sharding, mesh):
    """Shardings for ``tx.init(params)``: each param-shaped subtree follows the params' sharding,
    everything else (step counters) is replicated."""
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    # multi_transform keeps MaskedNode placeholders where a leaf belongs to another group: keep them.
    return optax.tree_utils.tree_map_params(
        tx, lambda value, s: value if isinstance(value, optax.MaskedNode) else s, abstract_opt, params_sharding,
        transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
        is_leaf=lambda x: isinstance(x, (NamedSharding, optax.MaskedNode)))


def create_train_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, mesh,
                       rules, seed: int):
    """Create the sharded TrainState and return (state, state_shardings).

    init_params(rng) -> boxed params (``model.init(...)['params']``).
    """
    abstract_params, p_shard = param_shardings(init_params, mesh, rules)
    o_shard = opt_state_shardings(tx, abstract_params, p_shard, mesh)
    rep = NamedSharding(mesh, PartitionSpec())
    shardings = TrainState(step=rep, params=p_shard, opt_state=o_shard, rng=rep)

    def init(rng):
        params = nn.meta.unbox(init_params(rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(jax.random.fold_in(rng, 1)))

    # No logical rules here: DenseGeneral initialises flattened kernels, which the params' own
    # (unflattened) axis names do not fit; out_shardings places the result.
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
    return state, shardings


def abstract_with_shardings(state_shardings, abstract_state):
    """ShapeDtypeStructs carrying the target shardings: the restore target for orbax (reshards on load)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, state_shardings)


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
