"""Language-modelling task: masked LM (15 %, 80/10/10, on device) and causal LM on packed ids [B, T].

``build`` assembles the whole sharded train step of a pretraining config through the engine: the
pretraining run, the benchmarks, the memory tables and the accelerator check all call it, so they measure
the step that training runs.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from tljax import engine, objectives
from tljax import sharding as shd
from tljax.models import LanguageModel, TransformerConfig, model_config
from tljax.policy import parse_rules

# Ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK] in tljax's trained tokenizers (used on random ids).
SPECIAL_IDS = (0, 1, 2, 3, 4)
MASK_ID = 4


def make_sums_fn(model: LanguageModel, config, special_ids: jax.Array, real_vocab: int, mask_id: int):
    """sums_fn(params, input_ids [B, T], rng, train) -> (loss sum, correct, count) of the objective:
    over the masked positions (MLM) or every next-token prediction (CLM)."""

    def sums_fn(params, input_ids, rng, train: bool):
        mask_rng, dropout_rng = jax.random.split(rng)
        attention_mask = jnp.ones_like(input_ids)  # packed: every position is a real token
        variables = {"params": params}
        rngs = {"dropout": dropout_rng} if train else {}
        if config.objective == "mlm":
            eligible = ~jnp.isin(input_ids, special_ids)
            mb = objectives.mlm_mask(mask_rng, input_ids, eligible, mask_id=mask_id, vocab_size=real_vocab,
                                     rate=config.mlm.rate, mask_prob=config.mlm.mask_prob,
                                     random_prob=config.mlm.random_prob)
            logits = model.apply(variables, mb.input_ids, attention_mask, positions=mb.positions,
                                 deterministic=not train, rngs=rngs)
            return objectives.mlm_loss(logits, mb)
        logits = model.apply(variables, input_ids, attention_mask, deterministic=not train, rngs=rngs)
        return objectives.clm_loss(logits, input_ids, attention_mask)

    return sums_fn


def train_loss(sums_fn):
    """The engine's loss: (mean loss [], {"accuracy": []}) of a batch (input_ids [B, T],)."""

    def loss_fn(params, batch, rng):
        loss_sum, correct, count = sums_fn(params, batch[0], rng, True)
        count = jnp.maximum(count, 1.0)
        return loss_sum / count, {"accuracy": correct / count}

    return loss_fn


def make_eval_step(sums_fn, seed: int):
    """eval_step(params, input_ids [B, T], batch_index) -> (loss sum, correct, count). A fixed key per
    eval batch: every evaluation masks the same positions, so numbers compare across steps and runs."""

    def eval_step(params, input_ids, batch_index):
        return sums_fn(params, input_ids, jax.random.fold_in(jax.random.key(seed + 1), batch_index), False)

    return eval_step


def totals_to_metrics(totals: np.ndarray) -> dict:
    """(loss sum, correct, count) -> {loss, accuracy, perplexity}."""
    loss = float(totals[0] / totals[2])
    return {"loss": loss, "accuracy": float(totals[1] / totals[2]), "perplexity": math.exp(min(loss, 50))}


@dataclasses.dataclass
class LMStep:
    """A pretraining config's sharded step: ``step(state, ids [B, T] int32) -> (state, metrics)`` (state
    donated), ``eval_step(params, ids, batch_index) -> sums``, the engine Setup (state, shardings, mesh,
    rules, optimizer), ``batch``: the ids' global ShapeDtypeStruct with its sharding, the model and its
    config. Call the steps inside ``shd.mesh_context(run.mesh, run.rules)``."""

    step: object
    eval_step: object
    run: engine.Setup
    batch: jax.ShapeDtypeStruct
    model: LanguageModel
    cfg: TransformerConfig
    sums_fn: object

    @property
    def state(self):
        return self.run.state

    @property
    def mesh(self):
        return self.run.mesh

    @property
    def rules(self):
        return self.run.rules


def build(config, special_ids=SPECIAL_IDS, real_vocab: int = 0, mask_id: int = MASK_ID, devices=None,
          init_params: dict | None = None) -> LMStep:
    """The train and eval steps of pretraining ``config`` (``model.vocab_size`` set, not 0) on ``devices``
    (default all), batch ``data.batch_size`` x ``data.seq_len``, optimizer from ``train`` and ``param_rules``.
    real_vocab: ids that masking may draw as random replacements (default: the model's vocabulary).
    init_params: LanguageModel params (host tree, in this config's layer layout) to start from instead of a
    random init (continued pretraining); subtrees it lacks (a pooler) start fresh."""
    if not config.model.vocab_size:
        raise ValueError("model.vocab_size=0 means 'from the tokenizer'; set it before building the step")
    mcfg = model_config(config.model)
    model = LanguageModel(mcfg)
    dummy = jnp.ones((1, config.data.seq_len), jnp.int32)
    run = engine.setup(lambda rng: model.init({"params": rng}, dummy)["params"], config.train, config.mesh,
                       config.sharding_rules, config.seed, rules=parse_rules(config.get("param_rules", ())),
                       start_params=init_params, devices=devices)
    sums_fn = make_sums_fn(model, config, jnp.asarray(special_ids, jnp.int32), real_vocab or mcfg.vocab_size,
                           mask_id if config.objective == "mlm" else 0)
    batch_sharding = run.batch_sharding()
    step = engine.compile_train_step(train_loss(sums_fn), run, (batch_sharding,))
    eval_step = jax.jit(make_eval_step(sums_fn, config.seed),
                        in_shardings=(run.state_sharding.params, batch_sharding, None),
                        out_shardings=shd.replicated(run.mesh))
    batch = jax.ShapeDtypeStruct((config.data.batch_size, config.data.seq_len), jnp.int32, sharding=batch_sharding)
    return LMStep(step, eval_step, run, batch, model, mcfg, sums_fn)


def random_batch(spec: jax.ShapeDtypeStruct, vocab_size: int, seed: int) -> jax.Array:
    """Uniform random non-special ids [B, T] with ``spec``'s sharding, starting with [CLS] (single process):
    for benchmarks and memory measurements that need no corpus."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(len(SPECIAL_IDS), vocab_size, spec.shape, dtype=np.int32)
    ids[:, 0] = SPECIAL_IDS[2]
    return jax.device_put(ids, spec.sharding)


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
