"""Orbax checkpoints of a run: ``workdir/checkpoints/<step>/{state,meta[,best]}``.

``state`` is the TrainState (params, optimizer state, step, PRNG key); ``meta`` is JSON with the data
position and anything else needed to resume. Saves are asynchronous and atomic (orbax writes into a
temporary folder and renames it when finalized); keep-last-N is orbax's.

A step that does not restore (a truncated or missing file, an empty ``<step>`` folder) is skipped: restore
walks back to the newest step that restores and moves the damaged ones aside to
``<step>.damaged-<UTC time>`` (kept, never deleted; orbax ignores such names). Left in place, a damaged
step would block saving that step again and make orbax rotate good checkpoints out behind it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from tljax.utils import is_lead_process, json_safe, log


class CheckpointError(ValueError):
    """No checkpoint of a run restores; the message names each step's problem and the fix."""


def _reason(error: BaseException) -> str:
    """One line saying why a restore failed (orbax/tensorstore errors run to many lines)."""
    lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
    text = lines[0] if lines else ""
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def step_problem(step_dir: Path) -> str | None:
    """A damage visible without reading the arrays (empty folder, missing part), or None."""
    if not step_dir.is_dir():
        return "the folder is missing"
    if not any(step_dir.iterdir()):
        return "the folder is empty"
    missing = [p for p in ("state", "meta") if not (step_dir / p).is_dir()]
    return f"it has no {' or '.join(missing)}/ folder" if missing else None


def _everywhere(ok: bool) -> bool:
    """True when ``ok`` holds on every process (multi-process runs must agree on which step restored)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def _walk_back(directory: Path, steps, try_restore, what: str):
    """Try ``try_restore(step)`` from the newest of ``steps`` down; returns (result, step, skipped) for the
    first that works, skipped = [(step, reason)] of the newer ones; raises CheckpointError if none does."""
    skipped = []
    for step in sorted(steps, reverse=True):
        problem = step_problem(directory / str(step))
        result = None
        if problem is None:
            try:
                result = try_restore(step)
            except Exception as e:  # any failure to read the step means it cannot be used
                problem = _reason(e)
        if _everywhere(problem is None):
            return result, step, skipped
        problem = problem or "it does not restore on another process"
        skipped.append((step, problem))
        log(f"checkpoint step {step} in {directory} does not restore ({problem}); {what}")
    shown = "; ".join(f"step {s}: {p}" for s, p in skipped[:3])
    if all("not compatible with the stored shape" in p for _, p in skipped):
        raise CheckpointError(f"the checkpoints in {directory} hold a model of other shapes than this run's "
                              f"({skipped[0][1][:160]}); the model config differs from the one that wrote them: use "
                              f"that config (its config.json), or a new --workdir")
    raise CheckpointError(f"no checkpoint in {directory} restores ({shown}); move the damaged step folders "
                          f"out of {directory} to start over, or use a new --workdir")


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int = 3, save_every: int = 0, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               save_interval_steps=1)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                           "best": ocp.StandardCheckpointHandler()})
        self.save_every = save_every

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, force: bool = False, best=None) -> bool:
        """Save ``state`` and JSON ``meta`` (and the ``best`` parameter tree, if given) as ``step``."""
        if not force and not (self.save_every and step % self.save_every == 0):
            return False
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(json_safe(meta)))
        if best is not None:
            items["best"] = ocp.args.StandardSave(best)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, target_state, step: int | None = None, best_target=None):
        """Restore (state, meta) at ``step`` (default latest) into the shardings of ``target_state``
        (a tree of ShapeDtypeStructs with shardings), resharding as needed. With ``best_target`` (the
        params' target), (state, meta, best) where best is None for a step saved without one."""
        step = self.latest_step() if step is None else step
        self._check_params_fit(step, target_state)
        items = dict(state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore())
        has_best = best_target is not None and (self.directory / str(step) / "best").is_dir()
        if has_best:
            items["best"] = ocp.args.StandardRestore(best_target)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if best_target is None:
            return restored["state"], restored["meta"]
        return restored["state"], restored["meta"], restored["best"] if has_best else None

    def _check_params_fit(self, step: int, target_state) -> None:
        """Compare the stored parameters' paths and shapes with the target's from the metadata alone: a
        model of another shape fails here with the first differing path, not deep inside orbax's
        asynchronous reads (which leave background tasks printing tracebacks at exit)."""
        target = getattr(target_state, "params", None)
        if not isinstance(target, dict):
            return
        try:
            stored = dict(self.manager.item_metadata(step)["state"])["params"]
        except Exception:  # no readable metadata: the restore itself reports the damage
            return
        want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(target, sep="/").items()}
        have = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(stored), sep="/").items()}
        for path in sorted(set(want) | set(have)):
            if want.get(path) != have.get(path):
                raise ValueError(f"parameter {path} is not compatible with the stored shape: this run's "
                                 f"{want.get(path, 'none')} vs stored {have.get(path, 'none')}")

    def restore_latest(self, target_state, best_target=None):
        """(state, meta, step) — (state, meta, best, step) with ``best_target`` — of the newest checkpoint
        that restores into ``target_state`` (as in ``restore``), or None when there is no checkpoint.
        Newer steps that do not restore are logged (one line each) and moved aside to
        ``<step>.damaged-<time>``; raises CheckpointError, moving nothing, when checkpoints exist but none
        restores (e.g. a model config other than the one that wrote them)."""
        steps = self.manager.all_steps()
        if not steps:
            return None
        restored, step, skipped = _walk_back(self.directory, steps,
                                             lambda s: self.restore(target_state, s, best_target),
                                             "trying the one before")
        if skipped:
            self._move_aside([s for s, _ in skipped])
        return (*restored, step)

    def _move_aside(self, steps) -> None:
        """Rename damaged step folders to ``<step>.damaged-<UTC time>`` (process 0, once every process is
        done reading them) and make orbax forget them."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("tljax_checkpoint_move_aside")
        if is_lead_process():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for step in steps:
                src = self.directory / str(step)
                if src.exists():
                    dst = self.directory / f"{step}.damaged-{stamp}"
                    os.replace(src, dst)
                    log(f"moved the damaged checkpoint aside to {dst} (kept; delete it once you no longer need it)")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("tljax_checkpoint_moved_aside")
        self.manager.reload()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def read_params(checkpoint_dir: str | Path, step: int | None = None) -> tuple[dict, int]:
    """The ``params`` of a run's checkpoint (latest step by default) as host numpy arrays, and the step.

    The target tree comes from the checkpoint's own metadata, so no model needs to be built first. With
    ``step`` None, a newest step that does not restore is skipped (one log line, nothing moved: the run
    belongs to someone else) for the newest one that does.
    """
    directory = Path(checkpoint_dir).absolute()
    mgr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                          "meta": ocp.JsonCheckpointHandler()})
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def read(s: int) -> dict:
        metadata = mgr.item_metadata(s)["state"]
        if metadata is None:
            raise CheckpointError("its state/_METADATA cannot be read")
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(metadata))
        return mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]

    try:
        if step is not None:
            try:
                state = read(step)
            except Exception as e:
                raise CheckpointError(f"checkpoint step {step} in {directory} does not restore ({_reason(e)}); "
                                      f"give the run's workdir to use its newest step that restores") from None
        else:
            steps = mgr.all_steps()
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {directory}; run 'tljax pretrain' with that workdir first")
            state, step, _ = _walk_back(directory, steps, read, "using the one before")
    finally:
        mgr.close()
    return jax.tree.map(np.asarray, state["params"]), step
