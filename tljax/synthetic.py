"""The pretraining train step on synthetic token ids, built exactly as ``tljax.pretrain.run`` builds it
(loss, optimizer, sharded state, jit with shardings and donation) but without tokenizer or corpus: for
memory and compile-time measurements and the accelerator check (``scripts/gpu_check.py``).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tljax import objectives, optim, pretrain
from tljax import sharding as shd
from tljax.models import LanguageModel, TransformerConfig, model_config
from tljax.state import TrainState, create_train_state

# Ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK], as in tljax's trained tokenizers.
SPECIAL_IDS = (0, 1, 2, 3, 4)
MASK_ID = 4


@dataclasses.dataclass
class SyntheticStep:
    """step(state, ids [B, T] int32) -> (state, metrics); the state is donated. batch: the ids' global
    shape, dtype and sharding. Call ``step`` (and lower it) inside ``shd.mesh_context(mesh, rules)``."""

    step: object
    state: TrainState
    batch: jax.ShapeDtypeStruct
    mesh: jax.sharding.Mesh
    rules: tuple
    model: TransformerConfig


def pretrain_step(config, devices=None) -> SyntheticStep:
    """The train step of a pretraining ``config`` (``model.vocab_size`` must be set, not 0) on ``devices``
    (default all), batch ``data.batch_size`` x ``data.seq_len``."""
    if not config.model.vocab_size:
        raise ValueError("model.vocab_size=0 means 'from the tokenizer'; synthetic steps need a size")
    mcfg = model_config(config.model)
    model = LanguageModel(mcfg)
    mesh = shd.make_mesh(config.mesh.axes, config.mesh.shape, devices)
    rules = shd.rules_from_config(config.sharding_rules)
    seq_len = config.data.seq_len
    tx = optim.make_optimizer(config.train)
    init_params = lambda rng: model.init({"params": rng}, jnp.ones((1, seq_len), jnp.int32))["params"]
    state, state_sharding = create_train_state(init_params, tx, mesh, rules, config.seed)
    loss_fn = pretrain.make_loss_fn(model, config, jnp.asarray(SPECIAL_IDS, jnp.int32), mcfg.vocab_size,
                                    MASK_ID if config.objective == "mlm" else 0)
    batch_sharding = shd.batch_sharding(mesh, rules)
    step = jax.jit(pretrain.make_train_step(loss_fn, tx, optim.lr_schedule(config.train)),
                   in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, shd.replicated(mesh)), donate_argnums=0)
    batch = jax.ShapeDtypeStruct((config.data.batch_size, seq_len), jnp.int32, sharding=batch_sharding)
    return SyntheticStep(step, state, batch, mesh, rules, mcfg)


def train_flops(model: TransformerConfig, batch: int, seq_len: int, objective: str, mlm_rate: float = 0.15) -> float:
    """Model FLOPs of one train step: matmuls only, 2 per multiply-add, backward = 2 x forward (so remat's
    recomputation is not counted, as MFU conventions have it). Per token and layer: Q, K, V, output
    projections 4 H^2, the MLP 2 H F, attention scores and mixing 2 T H. The LM head (BERT: dense H^2 + tied
    decoder H V) runs at the P = ceil(rate T) predicted positions for MLM, at every position for CLM."""
    h, f, layers, v = model.hidden_size, model.mlp_dim, model.num_layers, model.vocab_size
    per_token = layers * (4 * h * h + 2 * h * f + 2 * seq_len * h)
    if objective == "mlm":
        head_positions, head = objectives.max_predictions(seq_len, mlm_rate), h * h + h * v
    else:
        head_positions, head = seq_len, h * v
    return 6.0 * batch * (seq_len * per_token + head_positions * head)


def random_batch(spec: jax.ShapeDtypeStruct, vocab_size: int, seed: int) -> jax.Array:
    """Uniform random non-special ids [B, T] with ``spec``'s sharding, starting with [CLS] (single process)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIAL_IDS), vocab_size, spec.shape, dtype=np.int32)
    ids[:, 0] = SPECIAL_IDS[2]
    return jax.device_put(ids, spec.sharding)
