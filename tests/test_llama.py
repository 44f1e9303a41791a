"""Llama (``model.kind="llama"``): parity with transformers' PyTorch ``LlamaForCausalLM`` (grouped-query
attention, untied head, rope scaling, left padding), export round trip, sharded and scanned forwards.

Reference models are random-initialised by transformers at odd sizes, perturbed so that no norm scale is
trivially 1, saved with save_pretrained and loaded by tljax. Left-padded rows get the position ids that
transformers' ``generate`` gives them (cumsum of the mask - 1); comparisons are at real positions only.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

import torch  # a test dependency (pyproject [test]); missing torch must fail, not skip
import transformers

import tljax
from conftest import random_llama
from tljax import hf
from tljax.init_from import resolve
from tljax import sharding as shd
from tljax.cli import main as cli_main
from tljax.data import tokenizer as tok_lib
from tljax.models import LanguageModel, SequenceClassifier, TransformerConfig
from tljax.models.scan import stack_layers, unstack_layers

TOL = 1e-4

SHAPES = {
    # 6 query heads sharing 2 key/value heads, untied head, odd sizes, theta 500.
    "gqa_untied": dict(hidden_size=36, intermediate_size=50, num_hidden_layers=3, num_attention_heads=6,
                       num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6,
                       rope_theta=500.0, max_position_embeddings=64),
    # Tied head, multi-query (1 key/value head), Llama-3.1 rope scaling.
    "mqa_tied_llama3": dict(hidden_size=32, intermediate_size=44, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=1, tie_word_embeddings=True, rms_norm_eps=1e-5,
                            rope_theta=10000.0, max_position_embeddings=64,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "linear": dict(hidden_size=24, intermediate_size=30, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1000.0,
                   max_position_embeddings=64, rope_scaling={"rope_type": "linear", "factor": 3.0}),
    "yarn": dict(hidden_size=24, intermediate_size=30, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1000.0, max_position_embeddings=64,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    # max_position_embeddings 12 < the 17 positions of the inputs: the NTK base grows.
    "dynamic": dict(hidden_size=24, intermediate_size=30, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1000.0,
                    max_position_embeddings=12, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
}


@pytest.fixture(autouse=True)
def full_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def tokenizer():
    docs = ["the cat sat on the mat and the dog ran off with the hat"] * 20
    return tok_lib.train_byte_bpe(docs, 280)


def make_llama(folder, spec, tokenizer, seed=0):
    spec = dict(spec)
    if "rope_scaling" in spec:  # transformers 5 keeps theta inside the rope parameters
        spec["rope_parameters"] = dict(spec.pop("rope_scaling"), rope_theta=spec.pop("rope_theta"))
    model = random_llama(seed, vocab_size=len(tokenizer) + 11, bos_token_id=0, eos_token_id=0, **spec)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def left_padded_inputs(vocab, seed=0, batch=3, length=17):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, length))
    lengths = np.array([length, 11, 5])[:batch]
    mask = (np.arange(length)[None] >= (length - lengths)[:, None]).astype(np.int64)  # padding in front
    return ids, mask


def reference(model, ids, mask):
    """(logits, last hidden state) of the PyTorch model, positions from the mask as ``generate`` does."""
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions), output_hidden_states=True)
    return out.logits.numpy(), out.hidden_states[-1].numpy()


def max_diff(a, b, mask):
    m = mask.astype(bool)
    return float(np.abs(np.asarray(a, np.float32)[m] - np.asarray(b, np.float32)[m]).max())


@pytest.mark.parametrize("name", list(SHAPES))
def test_llama_parity_with_transformers(name, tmp_path, tokenizer):
    ref = make_llama(tmp_path / name, SHAPES[name], tokenizer)
    model = tljax.from_pretrained(f"hf:{tmp_path / name}")
    assert model.config.kind == "llama" and model.config.kv_heads == SHAPES[name]["num_key_value_heads"]
    assert model.config.tie_embeddings == SHAPES[name]["tie_word_embeddings"]
    ids, mask = left_padded_inputs(ref.config.vocab_size)
    out = model(ids, attention_mask=mask)
    logits, hidden = reference(ref, ids, mask)
    hidden_diff, logit_diff = max_diff(out.last_hidden_state, hidden, mask), max_diff(out.logits, logits, mask)
    print(f"llama {name}: last_hidden_state max abs diff {hidden_diff:.2e}, logits {logit_diff:.2e}")
    assert out.logits.shape == logits.shape
    assert hidden_diff <= TOL and logit_diff <= TOL
    # Scale of the check: logits differ by O(1) between tokens, so 1e-4 is not met by accident.
    assert np.abs(logits).max() > 1.0


def test_left_padding_computes_the_unpadded_row(tmp_path, tokenizer):
    make_llama(tmp_path / "m", SHAPES["gqa_untied"], tokenizer)
    model = tljax.from_pretrained(f"hf:{tmp_path / 'm'}")
    ids, mask = left_padded_inputs(model.config.vocab_size)
    padded = model(ids, attention_mask=mask).logits
    alone = model(ids[2:, -5:]).logits  # row 2 has its 5 real tokens at the end
    np.testing.assert_allclose(np.asarray(padded)[2, -5:], np.asarray(alone)[0], atol=1e-5)
    # Right padding too: the same tokens at the front of a row.
    right = np.zeros_like(ids[:1])
    right[0, :5] = ids[2, -5:]
    right_mask = (np.arange(ids.shape[1]) < 5)[None].astype(np.int64)
    np.testing.assert_allclose(np.asarray(model(right, attention_mask=right_mask).logits)[0, :5],
                               np.asarray(alone)[0], atol=1e-5)


@pytest.mark.parametrize("name", ["gqa_untied", "mqa_tied_llama3"])
def test_export_round_trip(name, tmp_path, tokenizer):
    ref = make_llama(tmp_path / "src", SHAPES[name], tokenizer)
    run = tmp_path / "run"
    assert cli_main(["convert", "--from", f"hf:{tmp_path / 'src'}", "--to", str(run)]) == 0
    assert cli_main(["convert", "--from", str(run), "--to", f"hf:{tmp_path / 'out'}"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == ref.config.num_key_value_heads
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    # Every tensor survives the trip exactly; the reloaded PyTorch model computes the same logits.
    original = ref.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, original[key]), key
    ids, mask = left_padded_inputs(ref.config.vocab_size, seed=3)
    np.testing.assert_array_equal(reference(back, ids, mask)[0], reference(ref, ids, mask)[0])
    assert back.config.rope_parameters == ref.config.rope_parameters
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert tok("the cat sat")["input_ids"] == tokenizer("the cat sat")["input_ids"]


def test_hf_llama_config_errors(tmp_path):
    base = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 16,
            "intermediate_size": 20, "num_hidden_layers": 1, "num_attention_heads": 4}
    with pytest.raises(hf.HFError, match="attention_bias"):
        hf.config_from_hf(dict(base, attention_bias=True))
    with pytest.raises(hf.HFError, match="head_dim=8 differs"):
        hf.config_from_hf(dict(base, head_dim=8))
    with pytest.raises(hf.HFError, match="rope_type='longrope' is not supported"):
        hf.config_from_hf(dict(base, rope_scaling={"rope_type": "longrope", "factor": 2.0}))
    with pytest.raises(hf.HFError, match="not a multiple of model.num_kv_heads=3"):
        hf.config_from_hf(dict(base, num_key_value_heads=3))
    cfg = hf.config_from_hf(dict(base, rope_theta=123.0, rope_scaling={"type": "linear", "factor": 2.0}))
    assert cfg.rope_theta == 123.0 and json.loads(cfg.rope_scaling) == {"rope_type": "linear", "type": "linear",
                                                                        "factor": 2.0}


def test_config_rejects_llama_settings_elsewhere():
    with pytest.raises(ValueError, match="llama settings"):
        TransformerConfig(kind="gpt", num_heads=2, num_kv_heads=1)
    with pytest.raises(ValueError, match="rope_type='ntk' is not supported"):
        TransformerConfig(kind="llama", rope_scaling='{"rope_type": "ntk"}')
    with pytest.raises(ValueError, match="lacks \\['low_freq_factor'"):
        TransformerConfig(kind="llama", rope_scaling='{"rope_type": "llama3", "factor": 8, "high_freq_factor": 4, '
                                                     '"original_max_position_embeddings": 8}')


# ----------------------------------------------------------------------------------------------------
# Mesh, scan, remat
# ----------------------------------------------------------------------------------------------------
def tiny(**kw):
    return TransformerConfig(**{**dict(kind="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                                       num_kv_heads=2, mlp_dim=48, max_len=16, activation="silu", dropout=0.0,
                                       attention_dropout=0.0, layer_norm_eps=1e-6, tie_embeddings=False), **kw})


def _inputs():
    ids = jax.random.randint(jax.random.key(0), (8, 16), 0, 64)
    mask = jnp.ones_like(ids).at[1, :5].set(0).at[2, 9:].set(0)  # one left-, one right-padded row
    return ids, mask


@pytest.mark.parametrize("mesh_shape", [(1, 4, 2), (2, 2, 2)], ids=["fsdp4_x_tensor2", "data2_fsdp2_tensor2"])
def test_sharded_forward_equals_single_device(mesh_shape):
    assert len(jax.devices()) == 8
    model = LanguageModel(tiny())
    ids, mask = _inputs()
    params = jax.jit(model.init)(jax.random.key(1), ids)["params"]
    expected = jax.jit(lambda p: model.apply({"params": p}, ids, mask))(nn.meta.unbox(params))

    mesh = shd.make_mesh(("data", "fsdp", "tensor"), mesh_shape)
    shardings = shd.logical_to_sharding(nn.get_partition_spec(params), mesh, shd.DEFAULT_RULES)
    sharded = jax.device_put(nn.meta.unbox(params), shardings)
    key = sharded["decoder"]["layer_0"]["attention"]["key"]["kernel"]
    assert key.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert key.addressable_shards[0].data.shape == (32 // mesh_shape[1], 1, 8)
    assert sharded["lm_head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    batch = shd.batch_sharding(mesh, shd.DEFAULT_RULES)
    with shd.mesh_context(mesh, shd.DEFAULT_RULES):
        got = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m), in_shardings=(shardings, batch, batch))(
            sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_llama_equals_per_layer(remat):
    scanned, plain = LanguageModel(tiny(scan_layers=True, remat=remat)), LanguageModel(tiny(remat=remat))
    ids, mask = _inputs()
    stacked = nn.meta.unbox(jax.jit(scanned.init)(jax.random.key(2), ids)["params"])
    assert stacked["decoder"]["layers"]["attention"]["key"]["kernel"].shape == (2, 32, 2, 8)
    per_layer = unstack_layers(stacked)
    jax.tree.map(np.testing.assert_array_equal, stack_layers(per_layer), stacked)
    apply = lambda model: jax.jit(lambda p: model.apply({"params": p}, ids, mask))
    np.testing.assert_allclose(apply(scanned)(stacked), apply(plain)(per_layer), atol=1e-5)
    grad = lambda model: jax.jit(jax.grad(lambda p: model.apply({"params": p}, ids, mask).std()))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 unstack_layers(grad(scanned)(stacked)), grad(plain)(per_layer))


def test_bf16_forward_close_to_f32_and_classifier_shares_backbone_paths():
    ids, mask = _inputs()
    model = LanguageModel(tiny())
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(3), ids)["params"])
    f32 = model.apply({"params": params}, ids, mask)
    bf16 = LanguageModel(tiny(dtype="bfloat16")).apply({"params": params}, ids, mask)
    assert bf16.dtype == jnp.float32
    assert float(jnp.abs(bf16 - f32).max()) < 0.05 * float(jnp.abs(f32).max())
    classifier = SequenceClassifier(tiny(), num_classes=3, pooling="last")
    cls_params = nn.meta.unbox(jax.jit(classifier.init)(jax.random.key(4), ids, mask)["params"])
    assert jax.tree.structure(cls_params["decoder"]) == jax.tree.structure(params["decoder"])
    assert classifier.apply({"params": cls_params}, ids, mask).shape == (8, 3)


# ----------------------------------------------------------------------------------------------------
# End to end: pretrain (scanned, remat), fine-tune, export
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_run(text_corpus, tmp_path_factory):
    """A tiny scanned, rematerialised, untied Llama pretrained for 12 steps by ``tljax.pretrain``."""
    from conftest import tiny_pretrain_config
    from tljax import pretrain
    workdir = tmp_path_factory.mktemp("llama_run")
    config = tiny_pretrain_config("clm", "llama", text_corpus, steps=12)
    config.model.update(num_heads=4, num_kv_heads=2, activation="silu", dropout=0.0, attention_dropout=0.0,
                        tie_embeddings=False, scan_layers=True, remat="full")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the function-scoped fixtures are not active yet
        mp.setenv("TLJAX_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(jax, "devices", lambda *a: jax.local_devices()[:1] if not a else jax.local_devices(*a)[:1])
        summary = pretrain.run(config, workdir)
    return workdir, summary


def test_pretrained_llama_run_exports_to_transformers(llama_run, tmp_path):
    run, summary = llama_run
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert losses[-1] < losses[0] - 0.5 and summary["eval_loss"] < np.log(300)  # it learns
    # The scanned run loads per-layer and exports to a LlamaForCausalLM that computes the same logits.
    model = tljax.from_pretrained(str(run))
    assert model.config.kind == "llama" and not model.config.scan_layers and not model.config.tie_embeddings
    hf.export_hf(resolve(str(run)), tmp_path / "hf")
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids, mask = left_padded_inputs(model.config.vocab_size, length=12)
    assert max_diff(model(ids, attention_mask=mask).logits, reference(back, ids, mask)[0], mask) <= TOL


@pytest.mark.slow
def test_finetune_from_a_pretrained_llama(llama_run, tmp_path, monkeypatch):
    import importlib.util
    import pathlib
    from conftest import write_keyword_task
    from tljax import finetune
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1] if not a else jax.local_devices(*a)[:1])
    spec = importlib.util.spec_from_file_location(
        "finetune_classify", pathlib.Path(__file__).parents[1] / "configs" / "finetune_classify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = write_keyword_task(tmp_path, (("train", 120), ("test", 40)))
    ft = module.get_config()
    ft.init_from, ft.strategy = str(llama_run[0]), "light"
    ft.data.update(name="", train=f"csv:{task}/train.csv", test=f"csv:{task}/test.csv", num_labeled=80,
                   validation_fraction=0.5, max_len=16, batch_size=8)
    ft.train.update(steps=20, eval_every=10, log_every=10)
    ft.mesh.shape = (1, 1, 1)
    ft.forgetting.update(sequences=16, batch_size=8)
    result = finetune.run(ft, tmp_path / "ft")
    assert result["pooling"] == "last" and 0.0 <= result["test_accuracy"] <= 1.0


def test_runs_saved_before_the_llama_fields_still_resume():
    from tljax.config import resume_differences
    saved = {"objective": "clm", "model": {"kind": "gpt", "num_layers": 2}}
    current = {"objective": "clm", "model": {"kind": "gpt", "num_layers": 2, "num_kv_heads": 0, "rope_theta": 10000.0,
                                             "rope_scaling": "", "tie_embeddings": True}}
    assert resume_differences(saved, current) == []
    current["model"]["tie_embeddings"] = False
    assert resume_differences(saved, current) == ["model.tie_embeddings: True -> False"]
