"""Llama-family decoder blocks (``model.kind="llama"``): RMSNorm, rotary positions, SwiGLU MLP and
grouped-query attention, with the Hugging Face ``LlamaForCausalLM`` conventions (rotary on the two halves
of each head, ``rotate_half``; RMSNorm statistics in float32).

Parameters carry logical axis names like BERT's and GPT's: query [H, N, D] (``embed, heads, kv``),
key / value [H, K, D] (``embed, kv_heads, kv``), out [N, D, H], gate / up [H, F] (``embed, mlp``),
down [F, H], norms [H] (``embed``). Shapes: B = batch, T = length, H = hidden, N = query heads,
K = key/value heads (N a multiple of K), D = head size, F = MLP size.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from tljax.models.layers import (ACTIVATIONS, Dropout, TransformerConfig, _attention_with_dropout, _causal_mask,
                                 normal_init, ones_init, parse_rope_scaling)

def rope_frequencies(cfg: TransformerConfig) -> tuple[np.ndarray, float]:
    """(inverse frequencies [D/2] float32, attention factor) of ``cfg``'s rotary embedding, computed on
    the host; rope scaling "dynamic" depends on the sequence length and is applied in ``rotary_tables``."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = 1.0 / (np.float32(cfg.rope_theta) ** exponents)
    scaling = parse_rope_scaling(cfg.rope_scaling)
    if scaling is None or scaling["rope_type"] == "dynamic":
        return inv_freq.astype(np.float32), 1.0
    factor = float(scaling["factor"])
    kind = scaling["rope_type"]
    if kind == "linear":
        return (inv_freq / np.float32(factor)).astype(np.float32), 1.0
    if kind == "llama3":
        old_len = float(scaling["original_max_position_embeddings"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn: frequencies between interpolated (/ factor) and original, ramped over the dimensions that
    # rotate between beta_slow and beta_fast times in the original context; cos / sin scaled by mscale.
    old_len = float(scaling["original_max_position_embeddings"])
    base = float(cfg.rope_theta)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1
    correction = lambda rotations: dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))
    lo, hi = correction(beta_fast), correction(beta_slow)
    if scaling.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1)
    extrapolation = 1 - ramp
    inv_freq = (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation
    return inv_freq.astype(np.float32), float(attention_factor)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """attention_mask [B, T] (1 = real token) -> position ids [B, T] int32: 0, 1, … over the real tokens,
    so that a left-padded row numbers its first real token 0 (pad positions get 0)."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


def rotary_tables(cfg: TransformerConfig, position_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """position_ids [B, T] -> (cos, sin), each [B, T, D] float32, the halves repeated as in HF's
    ``cat(freqs, freqs)`` and multiplied by the rope scaling's attention factor."""
    inv_freq, attention_factor = rope_frequencies(cfg)
    inv_freq = jnp.asarray(inv_freq)
    scaling = parse_rope_scaling(cfg.rope_scaling)
    if scaling is not None and scaling["rope_type"] == "dynamic":
        # NTK-aware: beyond max_len the base grows with the longest position in the batch (as HF does).
        dim, factor = cfg.head_dim, float(scaling["factor"])
        seq_len = jnp.maximum(position_ids.max() + 1, cfg.max_len).astype(jnp.float32)
        base = cfg.rope_theta * ((factor * seq_len / cfg.max_len) - (factor - 1)) ** (dim / (dim - 2))
        inv_freq = 1.0 / base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    freqs = position_ids.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, heads, D] rotated by (cos, sin) [B, T, D]: x cos + rotate_half(x) sin, in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis, statistics in float32. [..., H] -> [..., H]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", ones_init(("embed",)), (self.cfg.hidden_size,), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.layer_norm_eps)
        return normed * scale


class Projection(nn.Module):
    """x [B, T, H] -> [B, T, heads, D] with kernel [H, heads, D] and no bias."""

    cfg: TransformerConfig
    heads: int
    heads_axis: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        kernel = self.param("kernel", normal_init(cfg.init_std, ("embed", self.heads_axis, "kv")),
                            (cfg.hidden_size, self.heads, cfg.head_dim), jnp.float32)
        dtype = cfg.compute_dtype
        return jnp.einsum("bth,hnd->btnd", x.astype(dtype), kernel.astype(dtype))


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with N query heads sharing K key/value heads (query head n reads key/value
    head n // (N / K), as HF's ``repeat_kv``), rotary positions on queries and keys.

    Inputs: x [B, T, H]; mask [B, 1, 1, T] bool key mask or None; rotary (cos, sin) [B, T, D]. -> [B, T, H].
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, rotary) -> jax.Array:
        cfg = self.cfg
        dtype = cfg.compute_dtype
        cos, sin = rotary
        q = apply_rotary(Projection(cfg, cfg.num_heads, "heads", name="query")(x), cos, sin)
        k = apply_rotary(Projection(cfg, cfg.kv_heads, "kv_heads", name="key")(x), cos, sin)
        v = Projection(cfg, cfg.kv_heads, "kv_heads", name="value")(x)
        cpu_f16 = dtype == jnp.float16 and jax.default_backend() == "cpu"
        if cpu_f16 or (not deterministic and cfg.attention_dropout > 0):
            # The explicit path (dropout; XLA:CPU float16) has no grouped heads: repeat key/value heads.
            groups = cfg.num_heads // cfg.kv_heads
            k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
            rate = 0.0 if deterministic else cfg.attention_dropout
            out = _attention_with_dropout(q, k, v, mask, True, rate, self.make_rng("dropout") if rate > 0 else None)
        else:
            causal = _causal_mask(x.shape[1])
            out = jax.nn.dot_product_attention(q, k, v, mask=causal if mask is None else mask & causal,
                                               implementation=cfg.attention_impl)
        return OutProjection(cfg, name="out")(out)


class OutProjection(nn.Module):
    """x [B, T, N, D] -> [B, T, H] with kernel [N, D, H] (``heads, kv, embed``) and no bias."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        kernel = self.param("kernel", normal_init(cfg.init_std, ("heads", "kv", "embed")),
                            (cfg.num_heads, cfg.head_dim, cfg.hidden_size), jnp.float32)
        dtype = cfg.compute_dtype
        return jnp.einsum("btnd,ndh->bth", x.astype(dtype), kernel.astype(dtype))


class GatedMlp(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x)), no biases. [B, T, H] -> [B, T, H]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        dense = lambda features, names, name: nn.Dense(
            features, use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name=name,
            kernel_init=normal_init(cfg.init_std, names))
        gate = dense(cfg.mlp_dim, ("embed", "mlp"), "gate")(x)
        up = dense(cfg.mlp_dim, ("embed", "mlp"), "up")(x)
        return dense(cfg.hidden_size, ("mlp", "embed"), "down")(ACTIVATIONS[cfg.activation](gate) * up)


class LlamaLayer(nn.Module):
    """One pre-norm block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). [B, T, H] -> [B, T, H].
    Parameter paths: ln_1/scale, attention/{query,key,value,out}/kernel, ln_2/scale, mlp/{gate,up,down}/kernel."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, deterministic: bool, rotary) -> jax.Array:
        cfg = self.cfg
        drop = Dropout(cfg.dropout)
        attention = GroupedQueryAttention(cfg, name="attention")
        x = x + drop(attention(RMSNorm(cfg, name="ln_1")(x), mask, deterministic, rotary), deterministic)
        x = x + drop(GatedMlp(cfg, name="mlp")(RMSNorm(cfg, name="ln_2")(x)), deterministic)
        return nn.with_logical_constraint(x.astype(cfg.compute_dtype), ("batch", "length", "act_embed"))
