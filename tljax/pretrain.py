"""The pretraining trainer: masked LM (BERT) and causal LM (GPT) from one loop.

Sections: (1) workdir and config, (2) tokenizer, (3) packed data, (4) model, optimizer and sharded state,
(5) resume, (6) jitted steps, (7) the loop, (8) summary. Resume order: the latest checkpoint in the
workdir, else a fresh init.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tljax import config as config_lib
from tljax import distributed
from tljax import memory, objectives, optim
from tljax import sharding as shd
from tljax.checkpoint import Checkpoints
from tljax.data import packing, sources
from tljax.data import tokenizer as tok_lib
from tljax.data.fetch import cache_dir
from tljax.metrics import MetricWriter, Progress, is_lead_process
from tljax.models import LanguageModel, model_config
from tljax.state import TrainState, abstract_with_shardings, count_params, create_train_state


def log(msg: str) -> None:
    if is_lead_process():
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------
# Tokenizer and data
# ----------------------------------------------------------------------------------------------------
def eval_source(data_cfg) -> str:
    """The held-out source: ``data.eval_source``, else the built-in corpus's own eval split when training
    on it, else "" (hold out ``data.holdout`` of the training documents by text hash)."""
    if data_cfg.eval_source:
        return data_cfg.eval_source
    return "builtin:corpus_eval" if data_cfg.source == "builtin:corpus" else ""


def train_documents(data_cfg):
    docs = sources.iter_documents(data_cfg.source)
    holdout = 0.0 if eval_source(data_cfg) else data_cfg.holdout
    return sources.select_documents(docs, subsample=data_cfg.subsample, holdout=holdout)


def eval_documents(data_cfg):
    if eval_source(data_cfg):
        return sources.iter_documents(eval_source(data_cfg))
    return sources.select_documents(sources.iter_documents(data_cfg.source), subsample=data_cfg.subsample,
                                    holdout=data_cfg.holdout, take_holdout=True)


def data_keys(data_cfg) -> tuple[str, str]:
    """Cache keys (train, eval) of the documents selected by ``data_cfg``."""
    train_key = sources.fingerprint(data_cfg.source) + f"|train|{data_cfg.subsample}|{data_cfg.holdout}"
    held = eval_source(data_cfg)
    return train_key, (sources.fingerprint(held) if held else train_key + "|holdout")


def setup_tokenizer(config, workdir: Path):
    """The run's tokenizer: the one saved in the workdir, else data.tokenizer.path, else a newly trained
    one. Saved to ``workdir/tokenizer`` in Hugging Face format.

    Process 0 prepares and saves it; the others load what it saved rather than train their own (training
    is not deterministic across processes, and would race on the cache)."""
    def saved():
        if not (workdir / "tokenizer" / "tokenizer.json").exists():
            raise config_lib.ConfigError(f"process {jax.process_index()} does not see {workdir / 'tokenizer'}, "
                                         f"which process 0 wrote: the workdir must be on a filesystem every "
                                         f"process shares (NFS, a cloud bucket mount)")
        return tok_lib.load_tokenizer(workdir / "tokenizer")

    return distributed.lead_first("preparing the tokenizer", lambda: _prepare_tokenizer(config, workdir), saved)


def _prepare_tokenizer(config, workdir: Path):
    out = workdir / "tokenizer"
    if (out / "tokenizer.json").exists():
        return tok_lib.load_tokenizer(out)
    tcfg = config.data.tokenizer
    if tcfg.path:
        tokenizer = tok_lib.load_tokenizer(tcfg.path)
    else:
        # The trainer breaks ties in hash-map order (differs between processes), so a trained tokenizer is
        # cached per data + settings: runs of one config on one machine share the exact same vocabulary.
        key = packing.cache_key(sources.fingerprint(config.data.source), tcfg.kind, str(tcfg.vocab_size),
                                str(tcfg.train_fraction), str(config.data.subsample), str(config.data.holdout),
                                eval_source(config.data))
        cached = cache_dir() / "tokenizers" / key
        if (cached / "tokenizer.json").exists():
            tokenizer = tok_lib.load_tokenizer(cached)
        else:
            t0 = time.time()
            docs = sources.select_documents(train_documents(config.data), subsample=tcfg.train_fraction)
            tokenizer = tok_lib.train_tokenizer(tcfg.kind, docs, tcfg.vocab_size)
            log(f"trained a {tcfg.kind} tokenizer, {len(tokenizer)} tokens, in {time.time() - t0:.0f}s")
            _save_tokenizer(tokenizer, cached)
    _save_tokenizer(tokenizer, out)
    return tokenizer


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """save_pretrained into ``folder`` atomically (a crash never leaves a half-written tokenizer)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def packed_sequences(docs_fn, spec_key: str, tokenizer, config) -> np.ndarray:
    """[N, seq_len] int32 packed sequences, cached under the data cache keyed by data + tokenizer.
    Process 0 builds the cache first; the others then load it (or, with a cache per host, build the same)."""
    kind = config.model.kind
    sep = tokenizer.sep_token_id if kind == "bert" else tokenizer.eos_token_id
    key = packing.cache_key(spec_key, tok_lib.tokenizer_fingerprint(tokenizer), str(config.data.seq_len), kind)

    def build():
        t0 = time.time()
        stream = packing.token_stream(docs_fn(), tokenizer, sep)
        seqs = packing.pack(stream, config.data.seq_len, kind, tokenizer.cls_token_id, sep)
        log(f"tokenized and packed {len(stream):,} tokens into {len(seqs):,} sequences in {time.time() - t0:.0f}s")
        return seqs

    path = cache_dir() / "packed" / f"{key}.npy"
    return distributed.lead_first("packing the data", lambda: packing.cached_array(path, build))


def unigram_loss(sequences: np.ndarray, vocab: int, exclude: list[int]) -> float:
    """Cross-entropy (nats) of the best context-free predictor: the entropy of the token frequencies."""
    counts = np.bincount(sequences.ravel(), minlength=vocab).astype(np.float64)
    counts[exclude] = 0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------
def make_loss_fn(model: LanguageModel, config, special_ids: jax.Array, real_vocab: int, mask_id: int):
    """loss_fn(params, input_ids [B, T], rng, train) -> (mean loss, (loss sum, correct, count))."""

    def loss_fn(params, input_ids, rng, train: bool):
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
            sums = objectives.mlm_loss(logits, mb)
        else:
            logits = model.apply(variables, input_ids, attention_mask, deterministic=not train, rngs=rngs)
            sums = objectives.clm_loss(logits, input_ids, attention_mask)
        loss_sum, _, count = sums
        return loss_sum / jnp.maximum(count, 1.0), sums

    return loss_fn


def make_train_step(loss_fn, tx: optax.GradientTransformation, schedule):
    def train_step(state: TrainState, input_ids):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grad_fn = jax.value_and_grad(lambda p: loss_fn(p, input_ids, rng, True), has_aux=True)
        (loss, (_, correct, count)), grads = grad_fn(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "accuracy": correct / jnp.maximum(count, 1.0),
                   "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(loss_fn, seed: int):
    def eval_step(params, input_ids, batch_index):
        # A fixed key per eval batch: every evaluation masks the same positions, so numbers compare.
        rng = jax.random.fold_in(jax.random.key(seed + 1), batch_index)
        _, sums = loss_fn(params, input_ids, rng, False)
        return sums

    return eval_step


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
def run(config, workdir: str | Path) -> dict:
    """Pretrain per ``config`` into ``workdir`` (resuming if it holds checkpoints). Returns the summary."""
    t_start = time.time()
    workdir = Path(workdir)
    # (1) Workdir and config.
    if config.objective not in ("mlm", "clm"):
        raise config_lib.ConfigError(f"objective={config.objective!r} unknown; use 'mlm' or 'clm'")
    if (config.objective == "mlm") != (config.model.kind == "bert"):
        raise config_lib.ConfigError(f"objective={config.objective!r} needs model.kind="
                                     f"{'bert' if config.objective == 'mlm' else 'gpt or llama'}")
    workdir.mkdir(parents=True, exist_ok=True)

    # (2) Tokenizer, (3) data.
    tokenizer = setup_tokenizer(config, workdir)
    real_vocab = len(tokenizer)
    if config.model.vocab_size == 0:
        with config.unlocked():
            config.model.vocab_size = int(math.ceil(real_vocab / 128) * 128)
    elif config.model.vocab_size < real_vocab:
        raise config_lib.ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than the "
                                     f"tokenizer's {real_vocab} tokens; set it to 0 (automatic)")
    if config.data.seq_len > config.model.max_len:
        raise config_lib.ConfigError(f"data.seq_len={config.data.seq_len} exceeds model.max_len="
                                     f"{config.model.max_len}; lower one or raise the other")
    config_lib.check_resume(config, workdir)
    if is_lead_process():
        config_lib.save_config(config, workdir)

    train_key, eval_key = data_keys(config.data)
    train_seqs = packed_sequences(lambda: train_documents(config.data), train_key, tokenizer, config)
    eval_seqs = packed_sequences(lambda: eval_documents(config.data), eval_key, tokenizer, config)
    batch = config.data.batch_size
    n_eval_batches = min(config.train.eval_batches, len(eval_seqs) // batch)
    if n_eval_batches == 0:
        raise config_lib.ConfigError(f"the eval data has {len(eval_seqs)} sequences, fewer than one batch "
                                     f"({batch}); give more eval text or a smaller data.batch_size")
    specials = tok_lib.special_ids(tokenizer)
    baseline = unigram_loss(train_seqs, real_vocab, specials if config.objective == "mlm" else [])
    data = packing.PackedBatches(train_seqs, batch, config.seed)
    log(f"data: {len(train_seqs):,} train sequences, {len(eval_seqs):,} eval sequences of {config.data.seq_len} "
        f"tokens; unigram baseline loss {baseline:.3f}")

    # (4) Model, optimizer, mesh, sharded state.
    mcfg = model_config(config.model)
    model = LanguageModel(mcfg)
    mesh = shd.make_mesh(config.mesh.axes, config.mesh.shape)
    rules = shd.rules_from_config(config.sharding_rules)
    dummy = jnp.ones((1, config.data.seq_len), jnp.int32)
    init_params = lambda rng: model.init({"params": rng}, dummy)["params"]
    schedule = optim.lr_schedule(config.train)
    tx = optim.make_optimizer(config.train)
    state, state_sharding = create_train_state(init_params, tx, mesh, rules, config.seed)
    log(f"model: {mcfg.kind}, {count_params(state.params):,} parameters; mesh {dict(mesh.shape)}")

    # (5) Resume.
    ckpt = Checkpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                       save_every=config.train.checkpoint_every)
    if ckpt.latest_step() is not None:
        target = abstract_with_shardings(state_sharding, jax.eval_shape(lambda s: s, state))
        state, meta = ckpt.restore(target)
        log(f"resumed from step {int(state.step)} (data position {meta['data']})")

    # (6) Jitted steps: sharded in and out, state donated.
    loss_fn = make_loss_fn(model, config, jnp.asarray(specials, jnp.int32), real_vocab,
                           tokenizer.mask_token_id if config.objective == "mlm" else 0)
    batch_sharding = shd.batch_sharding(mesh, rules)
    train_step = jax.jit(make_train_step(loss_fn, tx, schedule), in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, shd.replicated(mesh)), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(loss_fn, config.seed),
                        in_shardings=(state_sharding.params, batch_sharding, None),
                        out_shardings=shd.replicated(mesh))

    # Global [batch, seq_len] batches; each process reads only the rows its devices hold.
    shape = (batch, config.data.seq_len)
    train_batch = lambda s: distributed.global_array(batch_sharding, shape, lambda rows: data.local_batch(s, rows))
    eval_batch = lambda i: distributed.global_array(batch_sharding, shape, lambda rows: eval_seqs[i * batch + rows])

    def evaluate(params) -> dict:
        totals = np.zeros(3)
        for i in range(n_eval_batches):
            totals += np.asarray(jax.device_get(eval_step(params, eval_batch(i), i)))
        loss = totals[0] / totals[2]
        return {"loss": loss, "accuracy": totals[1] / totals[2], "perplexity": math.exp(min(loss, 50))}

    # (7) The loop. Metrics stay on device between log points so the host never stalls the step.
    writer = MetricWriter(workdir)
    total_steps = config.train.steps
    step = int(state.step)
    stop_step = min(total_steps, step + config.train.run_steps) if config.train.run_steps else total_steps
    progress = Progress(total_steps, step, f"pretrain {config.objective}", config.train.log_every)
    tokens_per_step = batch * config.data.seq_len
    pending, last_train, last_eval = [], {}, {}
    t_log, steps_since_log, first_step = time.time(), 0, step
    meta = lambda s: {"data": data.position(s), "tokens_seen": s * tokens_per_step}
    try:
        with shd.mesh_context(mesh, rules):
            step_memory = memory.train_step_memory(train_step, state, memory.global_batch_spec(
                train_seqs, batch, batch_sharding))
            log(memory.describe(step_memory))
            while step < stop_step:
                state, metrics = train_step(state, train_batch(step))
                pending.append(metrics)
                step += 1
                steps_since_log += 1
                if step == first_step + 1:  # restart the clock: tokens/s excludes compilation
                    jax.block_until_ready(metrics)
                    t_log, steps_since_log = time.time(), 0
                if step % config.train.log_every == 0 or step == stop_step:
                    fetched = jax.device_get(pending)
                    now = time.time()
                    last_train = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                    last_train["tokens_per_second"] = steps_since_log * tokens_per_step / max(now - t_log, 1e-9)
                    writer.write(step, last_train, "train/")
                    pending, t_log, steps_since_log = [], now, 0
                    progress.update(step, {"loss": last_train["loss"], "acc": last_train["accuracy"],
                                           "tok/s": int(last_train["tokens_per_second"])})
                if step % config.train.eval_every == 0 or step == stop_step:
                    last_eval = evaluate(state.params)
                    writer.write(step, last_eval, "eval/")
                    log(f"step {step}: eval loss {last_eval['loss']:.4f} (unigram {baseline:.3f}), "
                        f"accuracy {last_eval['accuracy']:.4f}, perplexity {last_eval['perplexity']:.1f}")
                ckpt.save(step, state, meta(step))
    except BaseException:
        # Crash or Ctrl-C: keep the work done so far, then let the error surface.
        if step > first_step and ckpt.latest_step() != step:
            log(f"interrupted: saving a checkpoint at step {step} before exiting")
            ckpt.save(step, state, meta(step), force=True)
        ckpt.close()
        writer.close()
        progress.close()
        raise
    if ckpt.latest_step() != step:
        ckpt.save(step, state, meta(step), force=True)
    ckpt.close()
    progress.close()
    writer.close()
    if not last_eval:  # resumed at the end: evaluate the restored weights
        last_eval = evaluate(state.params)

    # (8) Summary.
    summary = {
        "objective": config.objective, "steps": step, "tokens_seen": step * tokens_per_step,
        "final_train_loss": last_train.get("loss"), "final_train_accuracy": last_train.get("accuracy"),
        "eval_loss": last_eval["loss"], "eval_accuracy": last_eval["accuracy"],
        "eval_perplexity": last_eval["perplexity"], "unigram_loss": baseline,
        "parameters": count_params(state.params), "wall_seconds": time.time() - t_start,
        "steps_this_run": step - first_step, "memory": step_memory,
    }
    if is_lead_process():
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"done: {json.dumps(summary)}")
    return summary

