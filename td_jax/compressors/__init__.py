"""Token-reduction methods behind one call: ``td_jax.compressors.get(name, **cfg)``."""
from td_jax.compressors.base import (Compressed, Compressor, CompressorModule, RNG_STREAM,
                                     check_tokens, get, names, register)


# Importing the method modules registers them.
from td_jax.compressors import token_dynamics as _token_dynamics  # noqa: F401,E402
