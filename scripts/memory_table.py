"""Per-device memory of the pretraining train step under precision, remat, scan and FSDP: the numbers
of docs/scaling.md.

    python scripts/memory_table.py            # ~3 minutes on 2 CPU cores (12 compilations)

For a BERT MLM step (4 layers, hidden 256, MLP 1024, seq 128, batch 16, vocab 8192) on one device, each
row gives XLA's ``memory_analysis`` of the compiled step (temporaries: activations kept for the backward
pass, gradients, workspace) and the bytes autodiff keeps from the forward pass (``memory.residual_bytes``:
what the program asks for, before a backend schedules it). Then the state per device under FSDP.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax

from tljax import memory
from tljax import sharding as shd
from tljax.defaults import pretrain_config
from tljax.tasks.lm import build

MIB = 2**20


def config(mesh_shape=(1, 1, 1), **model):
    c = pretrain_config("mlm", "bert")
    c.model.update(vocab_size=8192, hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024, max_len=128,
                   dropout=0.0, attention_dropout=0.0, **model)
    c.data.update(seq_len=128, batch_size=16)
    c.mesh.shape = mesh_shape
    return c


def residual_mib(s) -> float:
    ids = jax.ShapeDtypeStruct(s.batch.shape, s.batch.dtype)
    return memory.residual_bytes(lambda p, i: s.sums_fn(p, i, jax.random.key(0), True)[0], s.state.params, ids) / MIB


def main():
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}\n")
    print("| layout | dtype | remat | compiled temp MiB | autodiff residuals MiB |")
    print("| --- | --- | --- | ---: | ---: |")
    for scan in (False, True):
        for dtype in ("float32", "bfloat16"):
            for remat in ("none", "dots", "full"):
                s = build(config(dtype=dtype, remat=remat, scan_layers=scan), devices=jax.devices()[:1])
                with shd.mesh_context(s.mesh, s.rules):
                    temp = memory.step_memory(s.step, s.state, s.batch)["temp_bytes"]
                print(f"| {'scan' if scan else 'per-layer'} | {dtype} | {remat} | {temp / MIB:.0f} | "
                      f"{residual_mib(s):.0f} |", flush=True)

    print("\n| mesh (data, fsdp, tensor) | params MiB / device | optimizer MiB / device | total state MiB |")
    print("| --- | ---: | ---: | ---: |")
    for mesh_shape in ((1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 4, 1)):
        s = build(config(mesh_shape), devices=jax.devices()[:8 if mesh_shape != (1, 1, 1) else 1])
        p, o = memory.bytes_per_device(s.state.params), memory.bytes_per_device(s.state.opt_state)
        total = memory.total_bytes(s.state.params) + memory.total_bytes(s.state.opt_state)
        print(f"| {mesh_shape} | {p / MIB:.2f} | {o / MIB:.2f} | {total / MIB:.2f} |", flush=True)


if __name__ == "__main__":
    main()
