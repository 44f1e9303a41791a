"""The sharded train step gives the same losses on 1 device and on 8 (data, FSDP, data × tensor), and
parameters are laid out as the logical rules say."""
import numpy as np
import jax
import pytest
from jax.sharding import PartitionSpec as P

from tljax import sharding as shd
from tljax.defaults import pretrain_config
from tljax.tasks import lm as lm_task


def tiny_config(objective="mlm", kind="bert"):
    c = pretrain_config(objective, kind)
    c.model.update(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=16)
    c.train.update(steps=10, warmup_steps=2, lr=3e-3)
    return c


def run_steps(config, mesh, steps=4, batch=8, seq=16):
    # The pretraining run's own step builder, on this mesh's devices and shape.
    config.mesh.update(axes=tuple(mesh.axis_names), shape=tuple(mesh.devices.shape))
    config.data.update(batch_size=batch, seq_len=seq)
    built = lm_task.build(config, (0, 1, 2, 3, 4), 128, 4, devices=list(mesh.devices.flat))
    state, step, rules, bs = built.state, built.step, built.run.rules, built.batch.sharding
    mesh = built.run.mesh
    # Tokens from a small subset: a learnable distribution, so the loss must fall.
    data = np.random.default_rng(0).integers(5, 21, (steps, batch, seq)).astype(np.int32)
    losses = []
    with shd.mesh_context(mesh, rules):
        for i in range(steps):
            state, metrics = step(state, jax.device_put(data[i], bs))
            losses.append(float(metrics["loss"]))
    return losses, state


MESHES = {"data": ((8, 1, 1),), "fsdp": ((1, 8, 1),), "data_x_tensor": ((2, 1, 4),)}


@pytest.fixture(scope="module", params=[("mlm", "bert"), ("clm", "gpt")], ids=["bert_mlm", "gpt_clm"])
def reference(request):
    config = tiny_config(*request.param)
    mesh = shd.make_mesh(("data", "fsdp", "tensor"), (1, 1, 1), devices=jax.devices()[:1])
    losses, state = run_steps(config, mesh)
    return config, losses, jax.device_get(state.params)


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_losses_equal_single_device(reference, name):
    assert len(jax.devices()) == 8
    config, ref_losses, ref_params = reference
    mesh = shd.make_mesh(("data", "fsdp", "tensor"), MESHES[name][0])
    losses, state = run_steps(config, mesh)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
    assert losses[-1] < losses[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=2e-5), state.params, ref_params)


def test_parameters_are_sharded_as_the_rules_say():
    config = tiny_config()
    mesh = shd.make_mesh(("data", "fsdp", "tensor"), (1, 2, 4))
    _, state = run_steps(config, mesh, steps=1)
    layer = state.params["encoder"]["layer_0"]
    query = layer["attention"]["query"]["kernel"]  # [embed, heads, kv]
    assert query.sharding.spec == P("fsdp", "tensor", None)
    assert query.addressable_shards[0].data.shape == (32 // 2, 4 // 4, 8)
    assert layer["mlp"]["intermediate"]["kernel"].sharding.spec == P("fsdp", "tensor")
    word = state.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
    assert word.sharding.spec == P("tensor", "fsdp") and word.addressable_shards[0].data.shape == (32, 16)
    # Adam moments follow their parameter's sharding (not replicated).
    mu = state.opt_state[1][0].mu["encoder"]["layer_0"]["attention"]["query"]["kernel"]
    assert mu.sharding.spec == query.sharding.spec


def test_rules_ignore_axes_the_mesh_lacks():
    mesh = shd.make_mesh(("data",), (8,))
    rules = shd.rules_for_mesh(shd.DEFAULT_RULES, mesh)
    assert dict(rules)["batch"] == "data" and dict(rules)["embed"] is None
    assert shd.batch_sharding(mesh, shd.DEFAULT_RULES).spec == P("data", None)


def test_mesh_errors_name_the_fix():
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        shd.make_mesh(("data", "tensor"), (3, 2))
    with pytest.raises(ValueError, match="does not divide"):
        shd.make_mesh(("data", "tensor"), (-1, 3))
