"""Transformer building blocks shared by the BERT encoder and the GPT decoder.

Every parameter is created with logical axis names (``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``,
``pos``, ``types``) so that a rules table in the config decides how it is laid out on the device mesh.
Shapes use B = batch, T = sequence length, H = hidden size, N = heads, D = head size, F = MLP size.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn


def gelu_exact(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU. Same function as ``jax.nn.gelu(approximate=False)``, whose ``erfc`` form XLA:CPU
    lowers slowly (3-5 % of a tiny BERT step)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (2.0 ** -0.5)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    # "gelu" is the exact erf form (BERT); "gelu_new" the tanh approximation (GPT-2).
    "gelu": gelu_exact,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,  # Llama's SwiGLU gate
}


# Compute dtypes: parameters, LayerNorm statistics, softmax and logits stay float32 under all of them.
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


# rope_type -> the keys its Hugging Face ``rope_scaling`` dict must hold (besides rope_type).
ROPE_SCALING_KEYS = {"linear": ("factor",), "dynamic": ("factor",),
                     "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                     "yarn": ("factor", "original_max_position_embeddings")}


def parse_rope_scaling(text: str) -> dict | None:
    """``model.rope_scaling`` (a JSON object as text, "" = none) -> the dict, or None. Raises ValueError
    naming the problem for an unknown rope_type or a missing key."""
    if not text:
        return None
    try:
        scaling = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"model.rope_scaling={text!r} is not JSON ({e}); give e.g. "
                         f"'{{\"rope_type\": \"linear\", \"factor\": 2.0}}' or '' for none") from None
    if not isinstance(scaling, dict):
        raise ValueError(f"model.rope_scaling={text!r} must be a JSON object")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return None
    if rope_type not in ROPE_SCALING_KEYS:
        raise ValueError(f"model.rope_scaling rope_type={rope_type!r} is not supported; use one of "
                         f"{', '.join(ROPE_SCALING_KEYS)} (or '' for none)")
    missing = [k for k in ROPE_SCALING_KEYS[rope_type] if scaling.get(k) is None]
    if missing:
        raise ValueError(f"model.rope_scaling of rope_type {rope_type!r} lacks {missing}")
    return dict(scaling, rope_type=rope_type)



@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture hyper-parameters; one instance describes a BERT or a GPT model."""

    kind: str = "bert"  # "bert" (post-LN encoder), "gpt" (pre-LN causal decoder) or "llama" (tljax.models.llama)
    vocab_size: int = 8192
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    mlp_dim: int = 512
    max_len: int = 128
    type_vocab_size: int = 2  # BERT segment ids; unused by GPT
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon; RMSNorm's for llama
    init_std: float = 0.02
    use_pooler: bool = True
    dtype: str = "float32"  # compute dtype; parameters stay float32
    attention_impl: str | None = None  # None: let JAX pick (cuDNN fused kernels on GPU when possible)
    remat: str = "none"  # "none" | "full" | "dots": what each layer recomputes in the backward pass
    # One nn.scan over stacked layer parameters (encoder/layers/..., leading axis L) instead of
    # layer_0 … layer_{L-1}: the compiled step holds one layer body, so deep models compile faster.
    scan_layers: bool = False
    # Llama only: key/value heads of grouped-query attention (0 = num_heads), rotary base, Hugging
    # Face-style rope scaling as a JSON object ("" = none, e.g. '{"rope_type": "linear", "factor": 2.0}'),
    # and whether the LM head is the word embeddings (False: a separate lm_head/kernel [H, V]).
    num_kv_heads: int = 0
    rope_theta: float = 10000.0
    rope_scaling: str = ""
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.kind not in ("bert", "gpt", "llama"):
            raise ValueError(f"model.kind={self.kind!r} is not supported; use 'bert', 'gpt' or 'llama'")
        if self.kind != "llama":
            if self.num_kv_heads not in (0, self.num_heads) or not self.tie_embeddings or self.rope_scaling:
                raise ValueError(f"model.num_kv_heads, model.tie_embeddings=False and model.rope_scaling are "
                                 f"llama settings; model.kind={self.kind!r} has none of them")
        elif self.num_kv_heads < 0 or self.num_heads % self.kv_heads:
            raise ValueError(f"model.num_heads={self.num_heads} is not a multiple of model.num_kv_heads="
                             f"{self.num_kv_heads}; grouped-query attention shares each key/value head "
                             f"among num_heads / num_kv_heads query heads")
        elif self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size; hidden_size / num_heads = {self.head_dim}")
        else:
            parse_rope_scaling(self.rope_scaling)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.activation={self.activation!r} unknown; use one of {sorted(ACTIVATIONS)}")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"model.remat={self.remat!r} unknown; use 'none', 'full' or 'dots'")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} unknown; use one of {', '.join(COMPUTE_DTYPES)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads K (= num_heads except in grouped-query attention)."""
        return self.num_kv_heads or self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


def normal_init(std: float, names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones_init(names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
    # LayerNorm statistics are computed in float32 even under bf16 compute.
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                        scale_init=ones_init(("embed",)), bias_init=zeros_init(("embed",)), name=name)


class HeadProjection(nn.Module):
    """x [B, T, H] -> [B, T, N, D] with kernel [H, N, D] (``embed, heads, kv``) and bias [N, D]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        shape = (cfg.hidden_size, cfg.num_heads, cfg.head_dim)
        kernel = self.param("kernel", normal_init(cfg.init_std, ("embed", "heads", "kv")), shape, jnp.float32)
        bias = self.param("bias", zeros_init(("heads", "kv")), shape[1:], jnp.float32)
        dtype = cfg.compute_dtype
        return jnp.einsum("bth,hnd->btnd", x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class HeadMerge(nn.Module):
    """x [B, T, N, D] -> [B, T, H] with kernel [N, D, H] (``heads, kv, embed``) and bias [H]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        shape = (cfg.num_heads, cfg.head_dim, cfg.hidden_size)
        kernel = self.param("kernel", normal_init(cfg.init_std, ("heads", "kv", "embed")), shape, jnp.float32)
        bias = self.param("bias", zeros_init(("embed",)), shape[-1:], jnp.float32)
        dtype = cfg.compute_dtype
        return jnp.einsum("btnd,ndh->bth", x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``jax.nn.dot_product_attention``.

    Inputs: x [B, T, H]; mask [B, 1, T, T] bool (True = may attend) or None. Output [B, T, H].
    """

    cfg: TransformerConfig
    causal: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        dtype = cfg.compute_dtype

        def project(name):
            return HeadProjection(cfg, name=name)(x)

        q, k, v = project("query"), project("key"), project("value")  # [B, T, N, D]
        # XLA:CPU has no float16 x float16 -> float32 dot, which jax.nn.dot_product_attention asks for in
        # float16 (its fallback only catches eager errors): use the explicit path, whose rate 0 drops nothing.
        cpu_f16 = dtype == jnp.float16 and jax.default_backend() == "cpu"
        if cpu_f16 or (not deterministic and cfg.attention_dropout > 0):
            # The fused kernel has no dropout: fall back to explicit attention when it is needed.
            rate = 0.0 if deterministic else cfg.attention_dropout
            out = _attention_with_dropout(q, k, v, mask, self.causal, rate,
                                          self.make_rng("dropout") if rate > 0 else None)
        else:
            if self.causal and mask is not None:
                out = jax.nn.dot_product_attention(q, k, v, mask=mask & _causal_mask(x.shape[1]),
                                                   implementation=cfg.attention_impl)
            else:
                out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal,
                                                   implementation=cfg.attention_impl)
        return HeadMerge(cfg, name="out")(out)


def _causal_mask(length: int) -> jax.Array:
    """[1, 1, T, T] lower-triangular bool mask."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def _attention_with_dropout(q, k, v, mask, causal, rate, rng):
    """Reference attention with dropout on the probabilities. q, k, v: [B, T, N, D] -> [B, T, N, D]."""
    scale = q.shape[-1] ** -0.5
    # float32 scores and softmax under bf16 / f16 compute, as in the fused path.
    logits = jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32) * scale
    if causal:
        mask = _causal_mask(q.shape[1]) if mask is None else mask & _causal_mask(q.shape[1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1), rate, rng).astype(v.dtype)
    return jnp.einsum("bnts,bsnd->btnd", probs, v)


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Inverted dropout whose keep mask compares 16-bit halves of random uint32 words with a threshold:
    one threefry word serves two elements, where ``jax.random.bernoulli`` draws a word and makes a float
    per element (this dropout is ~1.5x faster on XLA:CPU). The keep probability is quantised to 1/65536;
    the scale uses the quantised value, so the expectation is exact."""
    threshold = round((1.0 - rate) * 65536)
    if threshold >= 65536:
        return x
    if threshold <= 0:
        return jnp.zeros_like(x)
    width = x.shape[-1]
    words = jax.random.bits(rng, x.shape[:-1] + ((width + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :width]
    return jnp.where(halves < threshold, x * (65536 / threshold), 0)


class Dropout(nn.Module):
    """``nn.Dropout`` (rng stream "dropout") with the cheaper mask of ``dropout``."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))


class MlpBlock(nn.Module):
    """Position-wise feed-forward: [B, T, H] -> [B, T, F] -> [B, T, H]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        h = nn.Dense(cfg.mlp_dim, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name="intermediate",
                     kernel_init=normal_init(cfg.init_std, ("embed", "mlp")),
                     bias_init=zeros_init(("mlp",)))(x)
        h = ACTIVATIONS[cfg.activation](h)
        return nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name="output",
                        kernel_init=normal_init(cfg.init_std, ("mlp", "embed")),
                        bias_init=zeros_init(("embed",)))(h)


class TransformerLayer(nn.Module):
    """One block. BERT: post-LN (x = LN(x + f(x))); GPT: pre-LN (x = x + f(LN(x))). [B, T, H] -> [B, T, H]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool) -> jax.Array:
        cfg = self.cfg
        drop = Dropout(cfg.dropout)
        attention = SelfAttention(cfg, causal=cfg.kind == "gpt", name="attention")
        mlp = MlpBlock(cfg, name="mlp")
        if cfg.kind == "bert":
            x = layer_norm(cfg, "attention_ln")(x + drop(attention(x, mask, deterministic), deterministic))
            x = layer_norm(cfg, "output_ln")(x + drop(mlp(x, deterministic), deterministic))
        else:
            x = x + drop(attention(layer_norm(cfg, "ln_1")(x), mask, deterministic), deterministic)
            x = x + drop(mlp(layer_norm(cfg, "ln_2")(x), deterministic), deterministic)
        return nn.with_logical_constraint(x.astype(cfg.compute_dtype), ("batch", "length", "act_embed"))


def remat_layer(cfg: TransformerConfig, layer_cls: type[nn.Module] = TransformerLayer):
    """``layer_cls``, wrapped in ``nn.remat`` according to ``cfg.remat``. Under ``nn.scan`` the loop
    already keeps XLA from merging the recomputation into the forward pass, so no CSE barrier is added."""
    if cfg.remat == "none":
        return layer_cls
    policy = None if cfg.remat == "full" else jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return nn.remat(layer_cls, policy=policy, prevent_cse=not cfg.scan_layers, static_argnums=(3,))


def padding_mask(attention_mask: jax.Array | None) -> jax.Array | None:
    """attention_mask [B, T] (1 = real token) -> [B, 1, 1, T] bool key mask, or None."""
    if attention_mask is None:
        return None
    return attention_mask.astype(bool)[:, None, None, :]
