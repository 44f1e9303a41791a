"""The training engine: one train-step builder and one training loop for every gradient-trained task.

A task (``tljax.tasks.lm``: masked / causal LM; ``tljax.tasks.classify``: sequence classification) gives
a loss ``loss_fn(params, batch, rng) -> (loss [], metrics {name: []})`` and, optionally, an evaluation
``evaluate(params) -> {name: float}``. The engine does the rest:

1. ``setup``: optimizer from the parameter policy, mesh and rules, the sharded TrainState created from
   ``eval_shape`` (optionally starting from given parameters).
2. ``compile_train_step``: value-and-grad, update, metrics; ``jax.jit`` with NamedShardings, state donated.
3. ``fit``: the loop, with its hooks — progress and metric rows at ``log_every``, evaluation at
   ``eval_every`` with best-by-metric selection and early stopping, orbax checkpoints (latest + the selected
   parameters) and exact resume, divergence detection, SIGTERM / SIGINT saving a checkpoint and stopping.

Resume is exact because the state holds the step and the PRNG key, the task's batch at step s is a pure
function of (seed, s), and the loop's own state (selection, evaluation curve, last train metrics, tokens
seen) is saved in each checkpoint's JSON meta.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.experimental import multihost_utils

from tljax import distributed, memory, policy
from tljax import sharding as shd
from tljax.checkpoint import Checkpoints
from tljax.metrics import MetricWriter, Progress
from tljax.state import TrainState, abstract_with_shardings, create_train_state, tree_bytes
from tljax.utils import log


class RunStopped(RuntimeError):
    """The run stopped before its last step on purpose or by failure; ``exit_code`` is the process's."""

    exit_code = 1


class Diverged(RunStopped):
    """The loss or gradient norm became non-finite. Nothing non-finite was saved."""

    exit_code = 3


class Preempted(RunStopped):
    """SIGTERM or SIGINT arrived: a checkpoint of the current step was saved; re-running resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# ----------------------------------------------------------------------------------------------------
# (1) Setup: optimizer, mesh, sharded state
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    """Everything a loop needs besides the task: the state (sharded, maybe restored later), its shardings,
    the optimizer and its group labels/plans, the schedule, the mesh and logical rules."""

    state: TrainState
    state_sharding: TrainState
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    labels: Any
    plans: dict
    mesh: jax.sharding.Mesh
    rules: tuple

    def batch_sharding(self, ndim: int = 2):
        """NamedSharding of a [batch, ...] array with ``ndim`` dims (batch over the data axes)."""
        return shd.batch_sharding(self.mesh, self.rules, ndim=ndim)

    def counts(self) -> tuple[int, int]:
        """(trainable, frozen) parameter counts under the policy."""
        return policy.trainable_counts(jax.eval_shape(lambda s: s, self.state.params), self.labels, self.plans)

    def optimizer_bytes(self) -> int:
        return tree_bytes(self.state.opt_state)


def setup(init_params: Callable[[jax.Array], Any], train_cfg, mesh_cfg, rules_cfg, seed: int,
          rules: Sequence[policy.Rule] = (), start_params=None, devices=None) -> Setup:
    """Build the optimizer from ``rules`` (the parameter policy) and create the sharded TrainState.

    init_params(rng) -> boxed params (``model.init(...)['params']``); start_params: a host tree to start from
    instead of the initialiser's values (e.g. a pretrained backbone + fresh head). Subtrees it leaves out keep
    the initialiser's values (e.g. a pooler the checkpoint lacks); a path the model lacks is a ValueError."""
    mesh = shd.make_mesh(mesh_cfg.axes, mesh_cfg.shape, devices)
    logical_rules = shd.rules_from_config(rules_cfg)
    abstract = jax.eval_shape(lambda r: nn.meta.unbox(init_params(r)), jax.random.key(0))
    tx, labels, plans = policy.make_optimizer(train_cfg, abstract, rules)
    state, sharding = create_train_state(init_params, tx, mesh, logical_rules, seed)
    if start_params is not None:
        state = state.replace(params=_overlay(state.params, start_params, sharding.params))
    return Setup(state, sharding, tx, policy.lr_schedule(train_cfg), labels, plans, mesh, logical_rules)


def _overlay(params, start_params, shardings):
    """``params`` (device tree) with every leaf ``start_params`` (host tree, maybe partial) has replaced by
    it, placed with ``shardings``."""
    flat, given = traverse_util.flatten_dict(params), traverse_util.flatten_dict(start_params)
    extra = sorted("/".join(p) for p in set(given) - set(flat))
    if extra:
        raise ValueError(f"start_params has {len(extra)} path(s) the model lacks: {', '.join(extra[:4])}")
    if len(given) == len(flat):
        return jax.device_put(start_params, shardings)
    where = traverse_util.flatten_dict(shardings)
    return traverse_util.unflatten_dict({p: jax.device_put(given[p], where[p]) if p in given else v
                                         for p, v in flat.items()})


# ----------------------------------------------------------------------------------------------------
# (2) The train step
# ----------------------------------------------------------------------------------------------------
def make_train_step(loss_fn, tx: optax.GradientTransformation, schedule, frozen=None):
    """``train_step(state, *batch) -> (state, metrics)`` for ``loss_fn(params, batch tuple, rng) -> (loss [],
    {name: []})``; metrics add ``loss``, ``grad_norm`` and ``learning_rate``. The step's dropout / masking key
    is the state's key folded with the step, so a resumed run draws the same randomness.

    frozen: optional tree of bools like the params (``policy.frozen_mask``): those leaves get no gradient
    (``stop_gradient``: zero, so XLA skips their weight-gradient products, and the clipping norm and
    ``grad_norm`` cover the trained leaves only)."""

    def differentiable(params):
        if frozen is None:
            return params
        return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)

    def train_step(state: TrainState, *batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, aux), grads = jax.value_and_grad(lambda p: loss_fn(differentiable(p), batch, rng),
                                                has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def compile_train_step(loss_fn, run: Setup, batch_shardings: Sequence):
    """The jitted train step: state and batch sharded as given, metrics replicated, state donated."""
    frozen = policy.frozen_mask(run.labels, run.plans)
    any_frozen = any(jax.tree.leaves(frozen))
    return jax.jit(make_train_step(loss_fn, run.tx, run.schedule, frozen if any_frozen else None),
                   in_shardings=(run.state_sharding, *batch_shardings),
                   out_shardings=(run.state_sharding, shd.replicated(run.mesh)), donate_argnums=0)


# ----------------------------------------------------------------------------------------------------
# (3) The loop
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoopSpec:
    """total_steps: the schedule's length. run_steps: stop this invocation after so many steps (0 = run to
    the end). log_every / eval_every: steps between metric rows / evaluations. checkpoint_every: steps
    between checkpoints (0 = only when stopped by a signal). keep_checkpoints: how many to keep.
    select: the evaluation metric (higher is better) whose best parameters the run keeps, or "" (keep the
    last). patience: evaluations without a gain of ``select`` before stopping early (0 = never).
    tokens_per_step: for the tokens-seen count (0 = not counted)."""

    total_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    run_steps: int = 0
    select: str = ""
    patience: int = 0
    tokens_per_step: int = 0


@dataclasses.dataclass
class FitResult:
    """state: the final TrainState. best_params: the selected parameters on the host (the last ones
    without ``select``). best_step / best_value: where and what. curve: one dict per evaluation (step, the
    evaluation's metrics, train_loss). last_train / last_eval: the last metric row and evaluation.
    steps_this_run, tokens_seen, compilations of the train step, memory of the compiled step, stopped_early."""

    state: TrainState
    best_params: Any
    best_step: int
    best_value: float | None
    curve: list
    last_train: dict
    last_eval: dict
    steps_this_run: int
    tokens_seen: int
    compilations: int
    memory: dict
    stopped_early: bool
    data_position: dict | None = None


class _StopSignals:
    """SIGTERM / SIGINT set a flag that the loop reads between steps; a second signal acts as usual."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum
        log(f"received {signal.Signals(signum).name}: saving a checkpoint after this step "
            f"(send it again to stop at once)")
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, signals act as usual
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, agree: bool) -> int:
        """The signal to stop on (0 = none). agree: all processes decide together (a collective)."""
        if jax.process_count() == 1 or not agree:
            return self.signum if jax.process_count() == 1 else 0
        return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))


@dataclasses.dataclass
class Resume:
    """What a run resumes from: the restored state, the loop's saved state, the selected parameters
    (host tree or None) and the data position saved with the checkpoint."""

    state: TrainState
    loop: dict
    best_params: Any
    data: dict | None


def restore(run: Setup, workdir: str | Path, select: bool = False) -> Resume | None:
    """The newest intact checkpoint in ``workdir/checkpoints`` restored into ``run``'s shardings, or None
    when there is none. Raises CheckpointError when checkpoints exist and none of them restores (a model
    that differs from the one that wrote them, or all damaged): never a silent fresh start."""
    # Process 0's view, for all: a process arriving later could otherwise see the folder that a faster
    # one's loop has just created and wait alone in orbax's collectives.
    exists = distributed.lead_decides((Path(workdir) / "checkpoints").is_dir())
    if not exists:
        return None
    ckpt = Checkpoints(Path(workdir) / "checkpoints")
    try:
        target = abstract_with_shardings(run.state_sharding, jax.eval_shape(lambda s: s, run.state))
        restored = ckpt.restore_latest(target, target.params if select else None)
    finally:
        ckpt.close()
    if restored is None:
        return None
    state, meta, best = restored[:3] if select else (*restored[:2], None)
    loop = meta.get("loop") or {"tokens_seen": int(meta.get("tokens_seen") or 0)}
    log(f"resumed from step {int(state.step)}" + (f" (data position {meta['data']})" if meta.get("data") else ""))
    return Resume(state, loop, None if best is None else jax.device_get(best), meta.get("data"))


def _mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _first_bad(rows: list[dict], first_step: int) -> int | None:
    """The step (1-based) of the first row whose loss or gradient norm is not finite."""
    for i, r in enumerate(rows):
        if not (math.isfinite(float(r["loss"])) and math.isfinite(float(r.get("grad_norm", 0.0)))):
            return first_step + i + 1
    return None


def fit(run: Setup, train_step, batch_for: Callable[[int], tuple], spec: LoopSpec, workdir: str | Path, *,
        evaluate: Callable[[Any], dict] | None = None, desc: str = "train", batch_specs: Sequence = (),
        data_position: Callable[[int], dict] | None = None, lr_hint: str = "train.lr",
        resume: Resume | None = None, on_eval: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train ``run.state`` with ``train_step`` (from ``compile_train_step``) on ``batch_for(step) -> batch
    tuple`` (global arrays; a pure function of the step) per ``spec``, writing metrics, checkpoints and
    progress under ``workdir``; resumes from the newest intact checkpoint there.

    evaluate(params) -> {metric: float} or None when there is nothing to evaluate on. batch_specs:
    ShapeDtypeStructs of the widest batch, for the compiled step's memory report. data_position(step) ->
    JSON-able dict saved with checkpoints. resume: what ``restore`` found in ``workdir`` (None: start
    from ``run.state``). on_eval(step, result): called after each evaluation (e.g. a log line). Raises Diverged (nothing non-finite is saved) or Preempted (a
    checkpoint of the current step was saved)."""
    workdir = Path(workdir)
    ckpt = Checkpoints(workdir / "checkpoints", keep=max(1, spec.keep_checkpoints))
    selecting = bool(spec.select)
    loop = {"curve": [], "best_step": 0, "best_value": None, "stale": 0, "last_train": {}, "tokens_seen": 0,
            "stopped_early": False}
    state, best_params = run.state, None
    if resume is not None:
        state, best_params = resume.state, resume.best_params
        loop.update(resume.loop)
    step = int(state.step)
    first_step = step
    stop_step = spec.total_steps if not spec.run_steps else min(spec.total_steps, step + spec.run_steps)
    if loop["stopped_early"]:
        stop_step = step
    writer = MetricWriter(workdir, resume_step=step)
    progress = Progress(spec.total_steps, step, desc, spec.log_every)
    pending: list = []  # device metrics of the steps since the last fetch
    fetched: list[dict] = []  # host metrics since the last metric row
    t_row, steps_in_row = time.time(), 0
    last_eval = {}
    step_memory: dict = {}

    def meta_for(s: int) -> dict:
        return {"data": data_position(s) if data_position else None, "tokens_seen": loop["tokens_seen"],
                "loop": loop}

    def fetch_and_check():
        """Move pending device metrics to the host; stop (saving nothing) on a non-finite one."""
        nonlocal pending
        if not pending:
            return
        rows = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
        bad = _first_bad(rows, step - len(pending))
        pending = []
        fetched.extend(rows)
        if bad is not None:
            kept = ckpt.latest_step()
            raise Diverged(f"the loss or gradient norm is not finite at step {bad}: training diverged, most likely "
                           f"from too high a learning rate (lower {lr_hint}, or raise train.warmup_steps); "
                           + (f"the last good checkpoint (step {kept}) is kept" if kept is not None
                              else "no checkpoint was saved"))

    def write_row(s: int):
        nonlocal fetched, t_row, steps_in_row
        if not fetched:
            return
        now = time.time()
        row = _mean_rows(fetched)
        if spec.tokens_per_step:
            row["tokens_per_second"] = steps_in_row * spec.tokens_per_step / max(now - t_row, 1e-9)
        loop["last_train"] = row
        writer.write(s, row, "train/")
        shown = {"loss": row["loss"], **({"acc": row["accuracy"]} if "accuracy" in row else {})}
        if spec.tokens_per_step:
            shown["tok/s"] = int(row["tokens_per_second"])
        if last_eval:
            shown.update({f"val_{k[:3]}": v for k, v in last_eval.items() if k == spec.select})
        progress.update(s, shown)
        fetched, t_row, steps_in_row = [], now, 0

    def save(s: int, force: bool = True):
        if ckpt.latest_step() == s:  # e.g. a signal at a checkpoint step: saved already
            return
        ckpt.save(s, state, meta_for(s), best=(jax.tree.map(jnp.asarray, best_params)
                                               if selecting and best_params is not None else None), force=force)

    signals = _StopSignals()
    try:
        with signals, shd.mesh_context(run.mesh, run.rules):
            if batch_specs:
                step_memory = memory.train_step_memory(train_step, state, *batch_specs)
                log(memory.describe(step_memory))
            while step < stop_step:
                state, metrics = train_step(state, *batch_for(step))
                pending.append(metrics)
                step += 1
                steps_in_row += 1
                loop["tokens_seen"] += spec.tokens_per_step
                if step == first_step + 1:  # restart the clock: throughput excludes compilation
                    jax.block_until_ready(metrics)
                    t_row, steps_in_row = time.time(), 0
                at_log = step % spec.log_every == 0 or step == stop_step
                at_eval = evaluate is not None and (step % spec.eval_every == 0 or step == stop_step)
                at_ckpt = spec.checkpoint_every and (step % spec.checkpoint_every == 0 or step == stop_step)
                if at_log or at_eval or at_ckpt:
                    fetch_and_check()
                if at_log or at_eval:
                    write_row(step)
                if at_eval:
                    result = evaluate(state.params)
                    if result is not None:
                        last_eval = result
                        if on_eval is not None:
                            on_eval(step, result)
                        writer.write(step, result, "eval/")
                        loop["curve"].append({"step": step, **result, "train_loss": loop["last_train"].get("loss")})
                        if selecting:
                            value = result[spec.select]
                            if loop["best_value"] is None or value > loop["best_value"]:
                                loop.update(best_step=step, best_value=value, stale=0)
                                best_params = distributed.to_host(state.params)
                            else:
                                loop["stale"] += 1
                                if spec.patience and loop["stale"] >= spec.patience:
                                    log(f"early stop at step {step}: no {spec.select} gain for {loop['stale']} "
                                        f"evaluations")
                                    loop["stopped_early"] = True
                if at_ckpt or loop["stopped_early"]:
                    if spec.checkpoint_every:
                        save(step)
                    if loop["stopped_early"]:
                        break
                signum = signals.requested(agree=at_log)
                if signum:
                    fetch_and_check()
                    write_row(step)
                    save(step)
                    ckpt.close()
                    name = signal.Signals(signum).name
                    raise Preempted(f"stopped by {name} at step {step}; a checkpoint of this step was saved: "
                                    f"re-run the same command to resume", signum)
    except (Diverged, Preempted):
        raise
    except BaseException:
        # A crash: keep the work done so far if it is sound, then let the error surface.
        if step > first_step and ckpt.latest_step() != step:
            try:
                fetch_and_check()
                log(f"interrupted: saving a checkpoint at step {step} before exiting")
                save(step)
            except Exception as e:  # the state may be gone (donated into a step that failed)
                log(f"could not save a checkpoint at step {step}: {type(e).__name__}")
        raise
    finally:
        ckpt.close()
        writer.close()
        progress.close()
    if not selecting or best_params is None:
        best_params = distributed.to_host(state.params)
        loop["best_step"] = step
    if not last_eval and loop["curve"] and loop["curve"][-1]["step"] == step:
        last_eval = {k: v for k, v in loop["curve"][-1].items() if k not in ("step", "train_loss")}
    return FitResult(state=state, best_params=best_params, best_step=loop["best_step"],
                     best_value=loop["best_value"], curve=loop["curve"], last_train=loop["last_train"],
                     last_eval=last_eval, steps_this_run=step - first_step, tokens_seen=loop["tokens_seen"],
                     compilations=train_step._cache_size(), memory=step_memory,
                     stopped_early=loop["stopped_early"],
                     data_position=data_position(step) if data_position else None)
