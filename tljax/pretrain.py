"""The pretraining run: masked LM (BERT) and causal LM (GPT) as the ``lm`` task on the engine.

Sections: (1) config checks and the workdir lock, (2) tokenizer and packed data (``tljax.data.lm``), (3) the sharded step
(``tljax.tasks.lm.build``), (4) resume, then the workdir is written, (5) the engine's loop, (6) summary.
Resume order: the newest intact checkpoint in the workdir, else ``init_from``'s weights (continued
pretraining, ``tljax.continued``: the source's tokenizer and architecture), else a fresh init. Nothing is
written into the workdir before every check has passed.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np

from tljax import config as config_lib
from tljax import continued, distributed, engine
from tljax import workdir as workdir_lib
from tljax import sharding as shd
from tljax.data import lm as lm_data
from tljax.data import packing
from tljax.data import tokenizer as tok_lib
from tljax.state import count_params
from tljax.tasks import lm as lm_task
from tljax.utils import is_lead_process, log, write_json


def run(config, workdir: str | Path, given=()) -> dict:
    """Pretrain per ``config`` into ``workdir`` (resuming if it holds checkpoints). Returns the summary.
    The config is checked first; the workdir is locked for the run (one run per workdir). given: dotted
    fields the user set explicitly (the CLI's overrides): with ``init_from`` they are compared with the
    source even when equal to a default."""
    config_lib.validate_pretrain(config)
    with workdir_lib.locked(workdir):
        return _run(config, Path(workdir), tuple(given))


def _run(config, workdir: Path, given: tuple) -> dict:
    t_start = time.time()
    # (1) Config: validated, and the workdir locked, by run(). With init_from, the architecture and the
    # tokenizer are the source's (tljax.continued), and the resolved config is validated again.
    start = None
    if config.init_from:
        start = continued.load(config, workdir, given)
        config = start.config
        config_lib.validate_pretrain(config)

    # (2) Tokenizer and data. The tokenizer decides the vocabulary, so the config is completed and
    # compared with a run already in the workdir here.
    def check_tokenizer(tokenizer):
        real = len(tokenizer)
        if config.model.vocab_size and config.model.vocab_size < real:
            raise config_lib.ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than the "
                                         f"tokenizer's {real} tokens; set it to 0 (automatic)")
        config_lib.check_resume(_with_vocab(config, real), workdir)

    tokenizer = lm_data.setup_tokenizer(config, workdir, check_tokenizer, start.tokenizer if start else None)
    real_vocab = len(tokenizer)
    config = _with_vocab(config, real_vocab)
    train_key, eval_key = lm_data.data_keys(config.data)
    train_seqs = lm_data.packed_sequences(lambda: lm_data.train_documents(config.data), train_key, tokenizer, config)
    eval_seqs = lm_data.packed_sequences(lambda: lm_data.eval_documents(config.data), eval_key, tokenizer, config)
    batch = config.data.batch_size
    n_eval_batches = min(config.train.eval_batches, len(eval_seqs) // batch)
    if n_eval_batches == 0:
        raise config_lib.ConfigError(f"the eval data has {len(eval_seqs)} sequences, fewer than one batch "
                                     f"({batch}); give more eval text (data.eval_source, or a larger data.holdout) or a smaller "
                                     f"data.batch_size")
    if len(train_seqs) == 0:
        raise config_lib.ConfigError("the training data produced no full sequence; give more text or a smaller "
                                     "data.seq_len")
    specials = tok_lib.special_ids(tokenizer)
    baseline = lm_data.unigram_loss(train_seqs, real_vocab, specials if config.objective == "mlm" else [])
    data = packing.PackedBatches(train_seqs, batch, config.seed)
    log(f"data: {len(train_seqs):,} train sequences, {len(eval_seqs):,} eval sequences of {config.data.seq_len} "
        f"tokens; unigram baseline loss {baseline:.3f}")

    # (3) The sharded train and eval steps.
    built = lm_task.build(config, specials, real_vocab, tokenizer.mask_token_id if config.objective == "mlm" else 0,
                          init_params=start.params if start else None)
    run_ = built.run
    log(f"model: {built.cfg.kind}, {count_params(run_.state.params):,} parameters; mesh {dict(run_.mesh.shape)}")

    # (4) Resume (a checkpoint that does not fit this model is an error here, before anything is written).
    resume = engine.restore(run_, workdir)
    if start is not None and start.params is None and resume is None:
        raise config_lib.ConfigError(f"{workdir / 'checkpoints'} holds no checkpoint that restores; move it away "
                                     f"to start again from init_from={config.init_from}")
    if is_lead_process():
        workdir.mkdir(parents=True, exist_ok=True)
        lm_data.save_tokenizer(tokenizer, workdir)
        config_lib.save_config(config, workdir)

    # Global [batch, seq_len] batches; each process reads only the rows its devices hold.
    batch_sharding = built.batch.sharding
    shape = (batch, config.data.seq_len)
    train_batch = lambda s: (distributed.global_array(batch_sharding, shape, lambda rows: data.local_batch(s, rows)),)
    eval_batch = lambda i: distributed.global_array(batch_sharding, shape, lambda rows: eval_seqs[i * batch + rows])

    def evaluate(params) -> dict:
        totals = np.zeros(3)
        for i in range(n_eval_batches):
            totals += np.asarray(jax.device_get(built.eval_step(params, eval_batch(i), i)))
        return lm_task.totals_to_metrics(totals)

    def log_eval(step: int, result: dict) -> None:
        log(f"step {step}: eval loss {result['loss']:.4f} (unigram {baseline:.3f}), accuracy {result['accuracy']:.4f}, "
            f"perplexity {result['perplexity']:.1f}")

    # Continued pretraining: the starting point's eval loss, what the run's gain is measured against
    # (kept from the first invocation's summary when resuming).
    init = {}
    if start is not None and resume is None:
        with shd.mesh_context(run_.mesh, run_.rules):
            init_eval = evaluate(run_.state.params)
        log_eval(0, init_eval)
        init = {"init_eval_loss": init_eval["loss"], "lm_head": start.head}
    elif start is not None and (workdir / "summary.json").exists():
        previous = json.loads((workdir / "summary.json").read_text())
        init = {k: previous[k] for k in ("init_eval_loss", "lm_head") if k in previous}

    # (5) The loop.
    t = config.train
    spec = engine.LoopSpec(total_steps=t.steps, log_every=t.log_every, eval_every=t.eval_every,
                           checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
                           run_steps=t.run_steps, tokens_per_step=batch * config.data.seq_len)
    result = engine.fit(run_, built.step, train_batch, spec, workdir, evaluate=evaluate,
                        desc=f"pretrain {config.objective}", resume=resume, data_position=data.position,
                        batch_specs=(built.batch,), on_eval=log_eval)
    last_eval = result.last_eval
    if not last_eval:  # resumed at the end: evaluate the restored weights
        with shd.mesh_context(run_.mesh, run_.rules):
            last_eval = evaluate(result.state.params)
        log_eval(int(result.state.step), last_eval)

    # (6) Summary.
    step = int(result.state.step)
    summary = {
        "objective": config.objective, "steps": step, "tokens_seen": result.tokens_seen,
        "final_train_loss": result.last_train.get("loss"), "final_train_accuracy": result.last_train.get("accuracy"),
        "eval_loss": last_eval["loss"], "eval_accuracy": last_eval["accuracy"],
        "eval_perplexity": last_eval["perplexity"], "unigram_loss": baseline,
        "parameters": count_params(result.state.params), "wall_seconds": time.time() - t_start,
        "steps_this_run": result.steps_this_run, "memory": result.memory,
        "init_from": config.init_from, "lm_head": "new" if start is None else start.head, **init,
    }
    if is_lead_process():
        write_json(workdir / "summary.json", summary)
    log(f"done: steps {step}, eval loss {summary['eval_loss']:.4f}, {summary['wall_seconds']:.0f}s")
    return summary


def _with_vocab(config, real_vocab: int):
    """``config`` with ``model.vocab_size`` 0 (automatic) set to the tokenizer's size rounded up to 128."""
    if config.model.vocab_size:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.vocab_size = int(math.ceil(real_vocab / 128) * 128)
    return config
