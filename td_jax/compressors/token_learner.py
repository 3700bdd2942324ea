"""``token_learner``: TokenLearner v1.1 (Ryoo et al., NeurIPS 2021; scenic's
``TokenLearnerModuleV11``), a trainable linen module.

Per group of tokens ``x [N, D]`` (a frame, as scenic applies it to video, or the whole
video): ``LayerNorm -> Dense(bottleneck_dim) -> GELU -> Dropout -> Dense(S) -> Dropout``
gives ``[N, S]`` logits; a softmax over the N positions turns each of the S columns into a
spatial attention map, and the S learned tokens are the attention-weighted sums of the
*un-normalised* inputs: ``out = softmax(logits^T, axis=-1) @ x``, ``[S, D]``.  Dense
layers use xavier-uniform kernels and N(0, 1e-6) biases, GELU is flax's (tanh
approximation), LayerNorm epsilon 1e-6 - all as in scenic.

Dropout draws from the ``"compress"`` RNG stream (active with ``deterministic=False``).

Modes: ``"frame"`` learns ``S = M // T`` tokens per frame (T*S real tokens); ``"video"``
learns ``S = M`` tokens over all T*H*W positions.

Padded videos (``mask``): the softmax runs over real positions only, so padding gets zero
weight; a group (frame or video) without real tokens yields zero tokens marked False.

aux:
  assign [B, T*H*W] int32: for every input token, the learned slot whose attention map
         weighs it most (a hard reading of the soft maps); -1 for masked tokens.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.compressors.base import RNG_STREAM, Compressed, CompressorModule, check_tokens, register, token_mask
from td_jax.compressors.common import pad_to_budget
from td_jax.dense import Dense


class TokenLearnerV11(nn.Module):
    """``x [G, N, D] (+ valid [G, N]) -> (tokens [G, S, D], maps [G, S, N])`` for S =
    ``num_tokens``; invalid positions get zero weight (a group with none valid: zero maps)."""

    num_tokens: int
    bottleneck_dim: int = 64
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True,
                 valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        dense_init = nn.initializers.xavier_uniform()
        bias_init = nn.initializers.normal(stddev=1e-6)
        y = nn.LayerNorm(epsilon=1e-6, name="norm",
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(x)
        y = Dense(self.bottleneck_dim, name="hidden",
                  kernel_init=nn.with_logical_partitioning(dense_init, ("embed", "mlp")),
                  bias_init=nn.with_logical_partitioning(bias_init, ("mlp",)))(y)
        y = nn.gelu(y)
        y = nn.Dropout(self.dropout_rate, rng_collection=RNG_STREAM)(y, deterministic=deterministic)
        y = Dense(self.num_tokens, name="token_masking",
                  kernel_init=nn.with_logical_partitioning(dense_init, ("mlp", None)),
                  bias_init=nn.with_logical_partitioning(bias_init, (None,)))(y)
        y = nn.Dropout(self.dropout_rate, rng_collection=RNG_STREAM)(y, deterministic=deterministic)
        logits = jnp.swapaxes(y, -1, -2)                            # [G, S, N]
        if valid is not None:   # a group without valid positions gets finite logits, then zero maps
            some = jnp.any(valid, axis=-1)[:, None, None]
            logits = jnp.where(valid[:, None, :] | ~some, logits, -jnp.inf)
        maps = jax.nn.softmax(logits, axis=-1)
        if valid is not None:
            maps = jnp.where(some, maps, 0.0)
        return jnp.einsum("gsn,gnd->gsd", maps, x), maps


@register("token_learner")
class TokenLearner(CompressorModule):
    """TokenLearner v1.1 to the budget: ``[B, T, H, W, D] -> [B, M, D]``.

    mode: ``"frame"`` (scenic's video use: ``M // T`` tokens per frame) or ``"video"``.
    bottleneck_dim: hidden width of the attention-map MLP (scenic default 64).
    dropout_rate: dropout inside the MLP (scenic default 0).
    """

    mode: str = "frame"
    bottleneck_dim: int = 64
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, tokens: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Compressed:
        check_tokens(tokens)
        b, t, h, w, d = tokens.shape
        if self.mode == "frame":
            groups, per = b * t, self.budget // t
            if per < 1:
                raise ValueError(f"token_learner(mode='frame'): budget={self.budget} < T={t} frames of tokens "
                                 f"{tuple(tokens.shape)}; use mode='video'")
        elif self.mode == "video":
            groups, per = b, self.budget
        else:
            raise ValueError(f"token_learner: mode must be 'frame' or 'video', got {self.mode!r}")
        real = None if mask is None else token_mask(mask, tokens.shape).reshape(groups, -1)
        x = tokens.reshape(groups, -1, d)
        if real is not None:
            x = jnp.where(real[..., None], x, 0).astype(x.dtype)
        learned, maps = TokenLearnerV11(per, self.bottleneck_dim, self.dropout_rate, name="learner")(
            x, deterministic=deterministic, valid=real)
        slot = jnp.argmax(maps, axis=1).astype(jnp.int32)  # [G, N]
        slot = slot + (jnp.arange(groups, dtype=jnp.int32) % (groups // b) * per)[:, None]
        group_real = jnp.ones((groups, per), bool) if real is None else jnp.broadcast_to(
            jnp.any(real, axis=1)[:, None], (groups, per))
        if real is not None:
            slot = jnp.where(real, slot, -1)
        out, slot_mask, _ = pad_to_budget(learned.reshape(b, -1, d), self.budget, mask=group_real.reshape(b, -1))
        return Compressed(tokens=out, mask=slot_mask, aux={"assign": slot.reshape(b, t * h * w)})

    def precompute(self, tokens: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
        """TokenLearner is learned from the first operation on: its stored stage is the tokens."""
        check_tokens(tokens)
        if mask is not None:
            raise ValueError("token_learner: a mask is not supported by its stored stage")
        return {"video": tokens}

    def apply_precomputed(self, precomputed: dict[str, jax.Array], deterministic: bool = True) -> Compressed:
        return self(precomputed["video"], deterministic)
