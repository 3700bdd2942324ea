"""td_jax: Token Dynamics (VQToken) video-token reduction in JAX/Flax."""
from td_jax import compressors

__version__ = "0.1.0"
