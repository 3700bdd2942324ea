"""Token-reduction methods behind one call: ``td_jax.compressors.get(name, **cfg)``."""
from td_jax.compressors.base import (Compressed, Compressor, CompressorModule, RNG_STREAM, cfg_from_json,
                                     check_budget, check_tokens, get, names, register, token_mask)


# Importing the method modules registers them.
from td_jax.compressors import token_dynamics as _token_dynamics  # noqa: F401,E402
from td_jax.compressors import frames as _frames, none as _none, pool as _pool, prune as _prune  # noqa: F401,E402
from td_jax.compressors import token_learner as _token_learner, tome as _tome  # noqa: F401,E402
from td_jax.compressors import dycoke as _dycoke, fastvid as _fastvid, holitom as _holitom  # noqa: F401,E402
from td_jax.compressors import vidtome as _vidtome, visionzip as _visionzip  # noqa: F401,E402
from td_jax.compressors.budget import BudgetPlan, plan, resolve_budget  # noqa: E402,F401
