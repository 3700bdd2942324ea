"""td_jax: Token Dynamics (VQToken) video-token reduction in JAX/Flax.

    td = td_jax.token_dynamics(tokens [T, H, W, D], k, key=key)
    td.base [K, D], td.dynamics_map [T, H, W], td.counts [K], td.valid [K]
    td_jax.reconstruct(td) -> [T, H, W, D]
"""
from td_jax.attention import CrossDynamicsAttention, trajectory_features
from td_jax.cluster import KMeansResult, assert_finite, kmeans
from td_jax.dynamics import (TokenDynamics, adaptive_token_dynamics, choose_k, reconstruct,
                             reconstruction_error, token_dynamics)
from td_jax import compressors
from td_jax.compressors.token_dynamics import TokenDynamicsCompressor
from td_jax.eval.budget import QWEN2_0_5B, DecoderShape, prefill_flops, token_report

# Heavier subpackages load on first use: td_jax.models, td_jax.convert, td_jax.data, td_jax.train.
_LAZY = {"models", "convert", "data", "train", "eval"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"td_jax.{name}")
    raise AttributeError(f"module 'td_jax' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "CrossDynamicsAttention", "DecoderShape", "KMeansResult", "QWEN2_0_5B", "TokenDynamics", "TokenDynamicsCompressor",
    "adaptive_token_dynamics", "assert_finite", "choose_k", "compressors", "kmeans", "prefill_flops", "reconstruct",
    "reconstruction_error", "token_dynamics", "token_report", "trajectory_features",
]
