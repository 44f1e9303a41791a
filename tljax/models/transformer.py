"""The BERT-style encoder and the GPT- and Llama-style decoders, with their language-model heads.

Layers are separate submodules ``layer_0 … layer_{L-1}`` so that parameter paths name each layer
(``encoder/layer_3/attention/query/kernel``): freezing, layer-wise learning rates and partial restores
key off these paths. With ``scan_layers`` they are one scanned, stacked submodule ``layers`` instead
(``tljax.models.scan`` converts between the two layouts).
Shapes: B = batch, T = length, H = hidden, V = vocabulary, P = predicted positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from tljax.models.layers import (Dropout, TransformerConfig, TransformerLayer, layer_norm, normal_init,
                                 padding_mask, remat_layer, zeros_init, ACTIVATIONS)
from tljax.models.llama import LlamaLayer, RMSNorm, positions_from_mask, rotary_tables
from tljax.models.scan import scanned_layers


class Embeddings(nn.Module):
    """Token + learned position (+ segment for BERT; Llama: token only, positions are rotary)
    embeddings. ids [B, T] -> [B, T, H]."""

    cfg: TransformerConfig

    def setup(self):
        cfg = self.cfg
        self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                                        embedding_init=normal_init(cfg.init_std, ("vocab", "embed")))
        if cfg.kind != "llama":
            self.position_embeddings = nn.Embed(cfg.max_len, cfg.hidden_size, param_dtype=jnp.float32,
                                                embedding_init=normal_init(cfg.init_std, ("pos", "embed")))
        if cfg.kind == "bert":
            self.token_type_embeddings = nn.Embed(
                cfg.type_vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                embedding_init=normal_init(cfg.init_std, ("types", "embed")))
            self.ln = layer_norm(cfg, "ln")
        self.dropout = Dropout(cfg.dropout)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool):
        cfg = self.cfg
        if input_ids.shape[1] > cfg.max_len and '"dynamic"' not in cfg.rope_scaling:  # dynamic rope extends it
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds model.max_len={cfg.max_len}")
        x = self.word_embeddings(input_ids)
        if cfg.kind != "llama":
            x = x + self.position_embeddings(position_ids)
        if cfg.kind == "bert":
            x = self.ln(x + self.token_type_embeddings(token_type_ids))
        return self.dropout(x, deterministic).astype(cfg.compute_dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        """Tied output projection: h [..., H] -> logits [..., V] (float32)."""
        return self.word_embeddings.attend(h.astype(jnp.float32))


class Transformer(nn.Module):
    """Embeddings and the stack of layers. Returns hidden states [B, T, H] after the last layer
    (and, for GPT / Llama, after the final LayerNorm / RMSNorm).

    Llama numbers positions from ``attention_mask`` (its real tokens 0, 1, …), so a left-padded row
    computes what the unpadded one does; ``position_ids`` [B, T] overrides that."""

    cfg: TransformerConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = Embeddings(cfg)
        if cfg.scan_layers:
            self.layers = scanned_layers(cfg)(cfg, name="layers")
        else:
            layer_cls = remat_layer(cfg, LlamaLayer if cfg.kind == "llama" else TransformerLayer)
            self.layers = [layer_cls(cfg, name=f"layer_{i}") for i in range(cfg.num_layers)]
        if cfg.kind == "gpt":
            self.ln_f = layer_norm(cfg, "ln_f")
        elif cfg.kind == "llama":
            self.ln_f = RMSNorm(cfg, name="ln_f")

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True):
        llama = self.cfg.kind == "llama"
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            if llama and attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)
            else:
                position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        mask = padding_mask(attention_mask)
        extra = (rotary_tables(self.cfg, position_ids),) if llama else ()
        if self.cfg.scan_layers:
            x, _ = self.layers(x, mask, deterministic, *extra)
        else:
            for layer in self.layers:
                x = layer(x, mask, deterministic, *extra)
        if self.cfg.kind != "bert":
            x = self.ln_f(x)
        return x


class Pooler(nn.Module):
    """BERT pooler: tanh(W h[CLS] + b). hidden [B, T, H] -> [B, H]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        dense = nn.Dense(self.cfg.hidden_size, param_dtype=jnp.float32, name="dense",
                         kernel_init=normal_init(self.cfg.init_std, ("embed", "embed_out")),
                         bias_init=zeros_init(("embed_out",)))
        return jnp.tanh(dense(hidden[:, 0].astype(jnp.float32)))


class MlmHead(nn.Module):
    """BERT MLM transform (dense + activation + LN) before the tied decoder. [..., H] -> [..., H]."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg = self.cfg
        h = nn.Dense(cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=jnp.float32, name="dense",
                     kernel_init=normal_init(cfg.init_std, ("embed", "embed_out")),
                     bias_init=zeros_init(("embed_out",)))(h)
        return layer_norm(cfg, "ln")(ACTIVATIONS[cfg.activation](h))


class LanguageModel(nn.Module):
    """Backbone + LM head (tied to the word embeddings; a Llama with ``tie_embeddings=False`` has its own
    ``lm_head/kernel`` [H, V]): the model that pretraining trains.

    ``__call__`` returns logits float32: [B, T, V], or [B, P, V] when ``positions`` [B, P] is given (the
    vocabulary projection then runs only at those positions, as in the original BERT).
    ``encode`` returns the backbone's hidden states [B, T, H]; ``pool`` the pooled [B, H] vector.
    """

    cfg: TransformerConfig

    def setup(self):
        cfg = self.cfg
        name = "encoder" if cfg.kind == "bert" else "decoder"
        self.backbone = Transformer(cfg, name=name)
        if cfg.kind == "bert":
            self.mlm_head = MlmHead(cfg)
            self.mlm_bias = self.param("mlm_bias", zeros_init(("vocab",)), (cfg.vocab_size,), jnp.float32)
            if cfg.use_pooler:
                self.pooler = Pooler(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                                    kernel_init=normal_init(cfg.init_std, ("embed", "vocab")))

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, deterministic=True):
        return self.backbone(input_ids, attention_mask, token_type_ids, deterministic=deterministic)

    def logits_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., H] -> vocabulary logits [..., V] through the (tied) LM head."""
        if self.cfg.kind == "bert":
            return self.backbone.embeddings.attend(self.mlm_head(hidden)) + self.mlm_bias
        if not self.cfg.tie_embeddings:
            return self.lm_head(hidden.astype(jnp.float32))
        return self.backbone.embeddings.attend(hidden)

    def pool(self, hidden: jax.Array) -> jax.Array:
        return self.pooler(hidden)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, positions=None,
                 deterministic: bool = True):
        hidden = self.encode(input_ids, attention_mask, token_type_ids, deterministic)
        if positions is not None:
            hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        if self.cfg.kind == "bert" and self.cfg.use_pooler and self.is_initializing():
            self.pool(hidden)  # create the pooler's parameters so checkpoints carry them
        return self.logits_from_hidden(hidden)


def pool_hidden(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
    """hidden [B, T, H], attention_mask [B, T] -> [B, H]: the first token ("cls"), the mean over real
    tokens ("mean"), or the last real token ("last", for causal decoders)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.astype(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
    if pooling == "last":
        last = jnp.maximum(attention_mask.sum(1).astype(jnp.int32) - 1, 0)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"pooling={pooling!r} unknown; use 'cls', 'mean' or 'last'")


class SequenceClassifier(nn.Module):
    """Backbone (same parameter paths as LanguageModel's, so pretrained weights load by path) + pooling
    + a new linear head ``classifier``. ids / mask [B, T] -> logits [B, C] float32.

    With pooling "cls" a BERT with ``use_pooler`` uses its pretrained pooler (tanh dense on [CLS]).
    """

    cfg: TransformerConfig
    num_classes: int
    pooling: str = "cls"
    head_dropout: float = 0.1

    def setup(self):
        cfg = self.cfg
        self.backbone = Transformer(cfg, name="encoder" if cfg.kind == "bert" else "decoder")
        if self.uses_pooler:
            self.pooler = Pooler(cfg)
        self.dropout = nn.Dropout(self.head_dropout)
        self.classifier = nn.Dense(self.num_classes, param_dtype=jnp.float32,
                                   kernel_init=normal_init(cfg.init_std, ("embed", "classes")),
                                   bias_init=zeros_init(("classes",)))

    @property
    def uses_pooler(self) -> bool:
        return self.cfg.kind == "bert" and self.cfg.use_pooler and self.pooling == "cls"

    def features(self, input_ids, attention_mask, token_type_ids=None, deterministic=True) -> jax.Array:
        """Pooled features [B, H] float32 (what the ``features`` strategy trains a classifier on)."""
        hidden = self.backbone(input_ids, attention_mask, token_type_ids, deterministic=deterministic)
        if self.uses_pooler:
            return self.pooler(hidden)
        return pool_hidden(hidden.astype(jnp.float32), attention_mask, self.pooling)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, deterministic=True) -> jax.Array:
        pooled = self.features(input_ids, attention_mask, token_type_ids, deterministic)
        return self.classifier(self.dropout(pooled, deterministic))
