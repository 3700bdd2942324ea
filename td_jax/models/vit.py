"""A SigLIP-style vision tower and the LLaVA projector, in flax.linen.

``VisionTower(cfg)(pixels [B, R, R, C]) -> [B, N, Dv]`` with N = (R / patch)².  Pixels
are NHWC float, already normalised (SigLIP: ``(x / 255 - 0.5) / 0.5``).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.dense import Dense
from td_jax.models.configs import VisionConfig, as_dtype

Array = jax.Array


def activation(name: str):
    """Hugging Face activation names → jax functions."""
    table = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(table)}")
    return table[name]


def _dense(features, names, dt, pdt, name, use_bias=True):
    return Dense(features, use_bias=use_bias, dtype=dt, param_dtype=pdt, name=name,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))


def _layernorm(eps, dt, pdt, name):
    return nn.LayerNorm(epsilon=eps, dtype=dt, param_dtype=pdt, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


class VisionAttention(nn.Module):
    """Bidirectional multi-head self-attention with biases.  x: [B, N, D] → [B, N, D]."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        B, N, D = x.shape
        nh = cfg.num_heads
        q, k, v = (_dense(D, ("vision_embed", "vision_heads"), dt, pdt, n)(x).reshape(B, N, nh, D // nh)
                   for n in ("q_proj", "k_proj", "v_proj"))
        out = jax.nn.dot_product_attention(q, k, v).reshape(B, N, D)
        return _dense(D, ("vision_heads", "vision_embed"), dt, pdt, "out_proj")(out)


class VisionMLP(nn.Module):
    cfg: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        h = activation(cfg.hidden_act)(_dense(cfg.intermediate_size, ("vision_embed", "vision_mlp"), dt, pdt, "fc1")(x))
        h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
        return _dense(cfg.hidden_size, ("vision_mlp", "vision_embed"), dt, pdt, "fc2")(h)


class VisionBlock(nn.Module):
    """Pre-norm encoder block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    cfg: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        x = x + VisionAttention(cfg, name="self_attn")(_layernorm(cfg.layer_norm_eps, dt, pdt, "layer_norm1")(x))
        x = x + VisionMLP(cfg, name="mlp")(_layernorm(cfg.layer_norm_eps, dt, pdt, "layer_norm2")(x))
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class AttentionPoolingHead(nn.Module):
    """SigLIP's multi-head attention pooling: a learned probe attends to the tokens.

    x: [B, N, D] → [B, D].
    """

    cfg: VisionConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        B, N, D = x.shape
        nh = cfg.num_heads
        probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "vision_embed")),
                           (1, 1, D), pdt)
        q = _dense(D, ("vision_embed", "vision_heads"), dt, pdt, "q_proj")(jnp.broadcast_to(probe, (B, 1, D)).astype(dt))
        k = _dense(D, ("vision_embed", "vision_heads"), dt, pdt, "k_proj")(x)
        v = _dense(D, ("vision_embed", "vision_heads"), dt, pdt, "v_proj")(x)
        out = jax.nn.dot_product_attention(q.reshape(B, 1, nh, D // nh), k.reshape(B, N, nh, D // nh),
                                           v.reshape(B, N, nh, D // nh)).reshape(B, 1, D)
        h = _dense(D, ("vision_heads", "vision_embed"), dt, pdt, "out_proj")(out)
        h = h + VisionMLP(cfg, name="mlp")(_layernorm(cfg.layer_norm_eps, dt, pdt, "layernorm")(h))
        return h[:, 0]


class VisionTower(nn.Module):
    """SigLIP vision transformer.

    ``__call__(pixels [B, R, R, C], select_layer=None)``:

    * ``select_layer=None`` → the last hidden state after ``post_layernorm`` ``[B, N, D]``
      (Hugging Face ``last_hidden_state``);
    * ``select_layer=i`` → hidden state ``i`` as LLaVA reads it (0 = embeddings, -1 = last
      block, -2 = second to last; no post-norm), running only the blocks needed.

    ``pooled(last_hidden [B, N, D]) -> [B, D]`` is the attention-pooling head (``use_head``).
    """

    cfg: VisionConfig

    def setup(self):
        cfg = self.cfg
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        p = cfg.patch_size
        self.patch_embedding = nn.Conv(
            cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=dt, param_dtype=pdt,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("patch_h", "patch_w", None, "vision_embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vision_embed",)))
        self.position_embedding = self.param(
            "position_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vision_pos", "vision_embed")),
            (cfg.grid * cfg.grid, cfg.hidden_size), pdt)
        block = nn.remat(VisionBlock) if cfg.remat else VisionBlock
        self.layers = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.post_layernorm = _layernorm(cfg.layer_norm_eps, dt, pdt, "post_layernorm")
        if cfg.use_head:
            self.head = AttentionPoolingHead(cfg)

    def embed(self, pixels: Array) -> Array:
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(f"pixels must be [B, {cfg.image_size}, {cfg.image_size}, {cfg.num_channels}] "
                             f"(NHWC), got shape {tuple(pixels.shape)}")
        x = self.patch_embedding(pixels.astype(as_dtype(cfg.dtype)))
        x = x.reshape(x.shape[0], -1, cfg.hidden_size)
        return x + self.position_embedding.astype(x.dtype)[None]

    def __call__(self, pixels: Array, select_layer: int | None = None) -> Array:
        n = self.cfg.num_layers
        if select_layer is None:
            upto = n
        else:
            upto = select_layer if select_layer >= 0 else n + 1 + select_layer
            if not 0 <= upto <= n:
                raise ValueError(f"select_layer={select_layer} out of range for {n} layers")
        x = self.embed(pixels)
        for layer in self.layers[:upto]:
            x = layer(x)
        if select_layer is None:
            x = self.post_layernorm(x)
        if self.is_initializing():   # create every parameter regardless of select_layer
            full = x
            for layer in self.layers[upto:]:
                full = layer(full)
            full = self.post_layernorm(full) if select_layer is not None else full
            if self.cfg.use_head:
                self.head(full)
        return x

    def pooled(self, last_hidden: Array) -> Array:
        if not self.cfg.use_head:
            raise ValueError("this vision config has use_head=False: no pooling head")
        return self.head(last_hidden)


class Projector(nn.Module):
    """LLaVA's vision→LLM projector.  x: [..., Dv] → [..., D].

    ``kind``: ``"mlp2x_gelu"`` (Linear, GELU, Linear), ``"linear"`` or ``"identity"``.
    """

    out_features: int
    kind: str = "mlp2x_gelu"
    use_bias: bool = True
    act: str = "gelu"
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        dt, pdt = as_dtype(self.dtype), as_dtype(self.param_dtype)
        if self.kind == "identity":
            if x.shape[-1] != self.out_features:
                raise ValueError(f"identity projector needs width {self.out_features}, got {x.shape[-1]}")
            return x.astype(dt)
        x = _dense(self.out_features, ("vision_embed", "mlp"), dt, pdt, "linear_1", self.use_bias)(x)
        if self.kind == "linear":
            return x
        if self.kind != "mlp2x_gelu":
            raise ValueError(f"unknown projector kind {self.kind!r}")
        x = activation(self.act)(x)
        return _dense(self.out_features, ("mlp", "embed"), dt, pdt, "linear_2", self.use_bias)(x)
