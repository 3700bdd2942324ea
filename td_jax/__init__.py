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

__version__ = "0.1.0"

__all__ = [
    "CrossDynamicsAttention", "KMeansResult", "TokenDynamics", "TokenDynamicsCompressor",
    "adaptive_token_dynamics", "assert_finite", "choose_k", "compressors", "kmeans", "reconstruct",
    "reconstruction_error", "token_dynamics", "trajectory_features",
]
