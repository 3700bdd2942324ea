"""The released Token Dynamics checkpoint's cross-attention, reproduced exactly.

The official code (``VQAttn``) is a ``torch.nn.TransformerDecoder`` of
``TransformerDecoderLayer``s — post-norm, ReLU, feed-forward 2048, dropout 0.1, 8 heads,
width 896, LayerNorm eps 1e-5, no final norm — whose *queries* are the dynamics-map rows
cast to float (``[T, H*W]`` raw cluster ids, 729 = 27x27) through ``Linear(729 → 896)``
and whose memory is the token base ``[K, 896]``.  When T != K it tiles the shorter of the
two to the longer length (repeat, then trim), so it emits ``max(T, K)`` tokens.

:class:`TDCompatAttention` is that module in linen (``queries [B, Lq, query_dim],
memory [B, Lk, D] → [B, Lq, D]``); :func:`official_inputs` builds its inputs from a
dynamics map and a base the way the released code does.  The project's own attention
(``td_jax.attention.CrossDynamicsAttention``) is the recommended design; this module
exists so the released weights reproduce.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.dense import Dense

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TDCompatConfig:
    query_dim: int = 729
    d_model: int = 896
    num_heads: int = 8
    dim_feedforward: int = 2048
    num_layers: int = 1
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} not divisible by num_heads={self.num_heads}")


def _dense(n, names, name):
    return Dense(n, name=name, kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))


def _ln(eps, name):
    return nn.LayerNorm(epsilon=eps, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class TorchMHA(nn.Module):
    """``torch.nn.MultiheadAttention`` (separate q/k/v projections after conversion).

    q: [B, Lq, D], kv: [B, Lk, D] → [B, Lq, D].
    """

    d_model: int
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, q, kv, deterministic: bool = True):
        B, Lq, D = q.shape
        Lk, h = kv.shape[1], self.num_heads
        qh = _dense(D, ("compat_in", "compat_out"), "q_proj")(q).reshape(B, Lq, h, D // h)
        kh = _dense(D, ("compat_in", "compat_out"), "k_proj")(kv).reshape(B, Lk, h, D // h)
        vh = _dense(D, ("compat_in", "compat_out"), "v_proj")(kv).reshape(B, Lk, h, D // h)
        logits = jnp.einsum("bqhd,bkhd->bhqk", qh, kh, precision=jax.lax.Precision.HIGHEST) / jnp.sqrt(D // h)
        w = jax.nn.softmax(logits, axis=-1)
        w = nn.Dropout(self.dropout)(w, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, vh, precision=jax.lax.Precision.HIGHEST).reshape(B, Lq, D)
        return _dense(D, ("compat_in", "compat_out"), "out_proj")(out)


class TorchDecoderLayer(nn.Module):
    """``torch.nn.TransformerDecoderLayer(norm_first=False, activation="relu")``."""

    cfg: TDCompatConfig

    @nn.compact
    def __call__(self, x, memory, deterministic: bool = True):
        c = self.cfg
        drop = lambda name: nn.Dropout(c.dropout, name=name)
        x = _ln(c.layer_norm_eps, "norm1")(
            x + drop("dropout1")(TorchMHA(c.d_model, c.num_heads, c.dropout, name="self_attn")(x, x, deterministic),
                                 deterministic=deterministic))
        x = _ln(c.layer_norm_eps, "norm2")(
            x + drop("dropout2")(TorchMHA(c.d_model, c.num_heads, c.dropout, name="multihead_attn")(x, memory, deterministic),
                                 deterministic=deterministic))
        h = jax.nn.relu(_dense(c.dim_feedforward, ("compat_in", "compat_out"), "linear1")(x))
        h = _dense(c.d_model, ("compat_in", "compat_out"), "linear2")(drop("dropout")(h, deterministic=deterministic))
        return _ln(c.layer_norm_eps, "norm3")(x + drop("dropout3")(h, deterministic=deterministic))


class TDCompatAttention(nn.Module):
    """The released ``VQAttn``: ``queries [B, Lq, query_dim], memory [B, Lk, D] → [B, Lq, D]``."""

    cfg: TDCompatConfig = TDCompatConfig()

    @nn.compact
    def __call__(self, queries: Array, memory: Array, deterministic: bool = True) -> Array:
        c = self.cfg
        if queries.shape[-1] != c.query_dim or memory.shape[-1] != c.d_model:
            raise ValueError(f"TDCompatAttention wants queries [.., {c.query_dim}] and memory [.., {c.d_model}], "
                             f"got {tuple(queries.shape)} and {tuple(memory.shape)}")
        x = _dense(c.d_model, ("compat_in", "compat_out"), "to_q_proj")(queries.astype(jnp.float32))
        for i in range(c.num_layers):
            x = TorchDecoderLayer(c, name=f"layers_{i}")(x, memory.astype(jnp.float32), deterministic)
        return x


def official_inputs(dynamics_map: Array, base: Array) -> tuple[Array, Array]:
    """The released code's inputs from one video.

    dynamics_map [T, H, W] int, base [K, D] → (queries [N, H*W] float32, memory [N, D])
    with N = max(T, K): the shorter of the two is tiled (repeat, trim) to N rows.
    Static shapes, so ``jax.vmap`` over a batch works.
    """
    T = dynamics_map.shape[0]
    rows = dynamics_map.reshape(T, -1).astype(jnp.float32)
    K = base.shape[0]
    n = max(T, K)
    tile = lambda a: jnp.tile(a, (n // a.shape[0] + 1, 1))[:n]
    return tile(rows), tile(base)
