"""Scan over layers: same function as the per-layer model with converted parameters; a scanned run's
checkpoint fine-tunes with per-layer freezing (it loads in the per-layer layout)."""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from tljax import finetune, pretrain
from tljax.config import resume_differences
from tljax.models import LanguageModel, TransformerConfig
from tljax.models.scan import stack_layers, unstack_layers
from tljax.pretrained import load_run
from conftest import tiny_pretrain_config as tiny, write_keyword_task


def cfg(kind, **kw):
    return TransformerConfig(kind=kind, vocab_size=64, hidden_size=16, num_layers=3, num_heads=2, mlp_dim=32,
                             max_len=16, **kw)


@pytest.mark.parametrize("kind,remat", [("bert", "none"), ("gpt", "full")])
def test_scanned_model_is_the_per_layer_model_with_stacked_params(kind, remat):
    scanned, plain = LanguageModel(cfg(kind, remat=remat, scan_layers=True)), LanguageModel(cfg(kind, remat=remat))
    ids = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
    mask = jnp.ones_like(ids).at[1, 12:].set(0)
    boxed = jax.jit(scanned.init)(jax.random.key(1), ids)["params"]
    backbone = "encoder" if kind == "bert" else "decoder"
    query = boxed[backbone]["layers"]["attention"]["query"]["kernel"]
    assert query.names == ("layers", "embed", "heads", "kv") and query.value.shape == (3, 16, 2, 8)
    stacked = nn.meta.unbox(boxed)
    per_layer = unstack_layers(stacked)
    assert sorted(k for k in per_layer[backbone] if k.startswith("layer")) == ["layer_0", "layer_1", "layer_2"]
    assert jax.tree.structure(per_layer) == jax.tree.structure(
        jax.eval_shape(lambda: nn.meta.unbox(plain.init(jax.random.key(1), ids)["params"])))
    jax.tree.map(np.testing.assert_array_equal, stack_layers(per_layer), stacked)

    apply = lambda model: jax.jit(lambda p: model.apply({"params": p}, ids, mask))
    np.testing.assert_allclose(apply(scanned)(stacked), apply(plain)(per_layer), atol=1e-5)
    # Gradients agree too, layer by layer (dropout off: the two layouts draw different dropout keys).
    loss = lambda model: jax.jit(jax.grad(lambda p: model.apply({"params": p}, ids, mask).std()))
    g_scanned, g_plain = loss(scanned)(stacked), loss(plain)(per_layer)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), unstack_layers(g_scanned), g_plain)


def test_stack_layers_needs_contiguous_layers():
    with pytest.raises(ValueError, match=r"encoder has layers \[0, 2\]"):
        stack_layers({"encoder": {"layer_0": {"w": np.ones(2)}, "layer_2": {"w": np.ones(2)}}})


def test_resume_check_allows_compute_settings_and_refuses_a_layout_change():
    saved = {"objective": "mlm", "model": {"num_layers": 2, "dtype": "float32", "remat": "none"}}  # older run
    current = {"objective": "mlm", "model": {"num_layers": 2, "dtype": "bfloat16", "remat": "full",
                                             "scan_layers": False}}
    assert resume_differences(saved, current) == []
    current["model"]["scan_layers"] = True
    assert resume_differences(saved, current) == ["model.scan_layers: False -> True"]


pytestmark = pytest.mark.usefixtures("one_device")  # conftest: a run sees one of the 8 test devices


def write_task(root: pathlib.Path):
    """Two classes marked by one word each ("great" / "little") among filler words; labels 0 / 1."""
    return write_keyword_task(root, labels=(0, 1))


def test_scanned_run_fine_tunes_with_per_layer_freezing(text_corpus, tmp_path):
    config = tiny("mlm", "bert", text_corpus, steps=6)
    config.model.update(num_layers=3, scan_layers=True, remat="full")
    pretrain.run(config, tmp_path / "pre")
    pre = load_run(tmp_path / "pre")
    assert not pre.model.scan_layers and "layer_2" in pre.params["encoder"] and "layers" not in pre.params["encoder"]

    write_task(tmp_path)
    spec = importlib.util.spec_from_file_location("ft", pathlib.Path(__file__).parents[1] / "configs" / "finetune_classify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.update(init_from=str(tmp_path / "pre"), strategy="light", unfrozen_layers=1)
    c.data.update(name="", train=f"csv:{tmp_path}/train.csv", test=f"csv:{tmp_path}/test.csv", num_labeled=60,
                  validation_fraction=0.34, max_len=16, batch_size=8)
    c.train.update(steps=6, eval_every=3, log_every=3, warmup_steps=1)
    c.mesh.shape = (1, 1, 1)
    c.forgetting.update(sequences=16, batch_size=8)
    summary = finetune.run(c, tmp_path / "ft")
    # Frozen: embeddings and layers 0-1. Trainable: layer_2 and the head; Adam keeps two moments of each.
    mem = json.loads((tmp_path / "ft" / "summary.json").read_text())["memory"]
    assert summary["frozen_params"] > 0
    assert 0 <= mem["opt_state_bytes_per_device"] - 2 * 4 * summary["trainable_params"] < 64
