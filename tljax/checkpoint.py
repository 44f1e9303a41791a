"""Orbax checkpoints of a run: ``workdir/checkpoints/<step>/{state,meta[,best]}``.

``state`` is the TrainState (params, optimizer state, step, PRNG key); ``meta`` is JSON with the data
position and the loop's own state needed to resume; ``best`` (runs that select parameters on validation)
holds the selected parameters. Saves are asynchronous and atomic (orbax finalizes a step by renaming it);
keep-last-N is orbax's.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from tljax.utils import json_safe, log


class CheckpointError(ValueError):
    """Checkpoints exist but none can serve this run; the message names the fix."""


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

    def restore_latest(self, target_state, best_target=None):
        """(state, meta, best or None) of the newest step that restores, or None when there is no
        checkpoint. Targets are trees of ShapeDtypeStructs with shardings (orbax reshards on load); a step
        that does not restore (damaged, half-deleted) is skipped with a log line and left on disk; when
        none restores, CheckpointError."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        problems = []
        for step in steps:
            try:
                items = dict(state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore())
                has_best = best_target is not None and (self.directory / str(step) / "best").is_dir()
                if has_best:
                    items["best"] = ocp.args.StandardRestore(best_target)
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                return restored["state"], restored["meta"], restored["best"] if has_best else None
            except Exception as e:  # any damage: try the previous step
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                problems.append(f"step {step}: {type(e).__name__}: {first}")
                log(f"checkpoint step {step} does not restore ({type(e).__name__}: {first}); it is kept on disk")
        if problems:
            raise CheckpointError(f"none of the {len(steps)} checkpoint(s) in {self.directory} restores into this "
                                  f"run ({problems[0]}); the model config differs from the run that wrote them "
                                  f"or they are damaged: use a new --workdir, or the config that wrote them")
        return None

    def restore(self, target_state, step: int | None = None):
        """Restore (state, meta) at ``step`` (default latest) into the shardings of ``target_state``
        (a tree of ShapeDtypeStructs with shardings), resharding as needed."""
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()



def read_params(checkpoint_dir: str | Path, step: int | None = None) -> tuple[dict, int]:
    """The ``params`` of a run's checkpoint (latest step by default) as host numpy arrays, and the step.

    The target tree comes from the checkpoint's own metadata, so no model needs to be built first.
    """
    directory = Path(checkpoint_dir).absolute()
    mgr = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                          "meta": ocp.JsonCheckpointHandler()})
    try:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}; run 'tljax pretrain' with that workdir first")
        metadata = mgr.item_metadata(step)["state"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(metadata))
        state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    finally:
        mgr.close()
    return jax.tree.map(np.asarray, state["params"]), step
