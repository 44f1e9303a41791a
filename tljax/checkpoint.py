"""Orbax checkpoints of a run: ``workdir/checkpoints/<step>/{state,meta}``.

``state`` is the TrainState (params, optimizer state, step, PRNG key); ``meta`` is JSON with the data
position and anything else needed to resume. Saves are asynchronous; keep-last-N is orbax's.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int = 3, save_every: int = 0, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save,
                                               save_interval_steps=1)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        self.save_every = save_every

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
        if not force and not (self.save_every and step % self.save_every == 0):
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

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
