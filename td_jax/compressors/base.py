"""One interface for every token-reduction method.

A compressor maps a batch of videos' visual tokens to a fixed number ``M`` of tokens:

    tokens [B, T, H, W, D] ──compressor(budget=M)──▶ Compressed(tokens [B, M, D], mask [B, M], aux)

``M`` is static (jit-friendly); ``mask`` marks real tokens (adaptive methods leave unused
slots False); ``aux`` holds method extras (the dynamics map, kept indices, merge sizes).

Each method is a ``flax.linen`` module subclassing :class:`CompressorModule`; randomness
comes from the ``"compress"`` RNG stream (``self.make_rng("compress")``), parameters (if
any) from ``"params"``.  :class:`Compressor` wraps a module class with its config and gives
the functional call ``compressor(tokens, key=..., budget=..., params=...)``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

RNG_STREAM = "compress"


@flax.struct.dataclass
class Compressed:
    """Output of every compressor.

    tokens: [B, M, D] compressed visual tokens.
    mask:   [B, M] bool, True for real tokens.
    aux:    dict of method extras (arrays only, so it passes through jit).
    """

    tokens: jax.Array
    mask: jax.Array
    aux: dict = dataclasses.field(default_factory=dict)


class CompressorModule(nn.Module):
    """Base class: ``__call__(tokens [B,T,H,W,D], deterministic=True) -> Compressed``.

    ``budget`` is the static number of output slots M.

    **Two stages.** Every method splits into a parameter-free stage that depends only on
    the tokens and the ``"compress"`` RNG (k-means, ToMe's merges, pruning's choice) and a
    learned stage on its output (the cross-dynamics attention; nothing for most methods).
    :meth:`precompute` runs the first stage and returns per-video arrays ``{name: [B, ...]}``,
    so it can run once per video and be stored (``launch/extract_tokens.py --compressor``);
    :meth:`apply_precomputed` runs the learned stage on such arrays.  For any key,
    ``apply_precomputed(precompute(tokens))`` equals ``__call__(tokens)``, with the same
    parameter tree, so weights trained on stored stages serve the in-model compressor.
    The defaults fit a parameter-free method: the whole call is the first stage and its
    ``tokens`` / ``mask`` are stored (``aux`` is not).
    """

    budget: int

    def __call__(self, tokens: jax.Array, deterministic: bool = True) -> Compressed:  # pragma: no cover
        raise NotImplementedError

    def precompute(self, tokens: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
        """The parameter-free stage: tokens [B,T,H,W,D] → ``{"tokens": [B, M, D], "mask": [B, M]}``."""
        out = self(tokens, deterministic=True) if mask is None else self(tokens, deterministic=True, mask=mask)
        return {"tokens": out.tokens, "mask": out.mask}

    def stage_spec(self, num_frames: int) -> dict[str, Any]:
        """What determines :meth:`precompute`'s output on videos of ``num_frames`` frames
        (JSON-able): two modules with equal specs store identical stages, so they can share
        one store."""
        del num_frames
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("parent", "name")}
        return {"module": type(self).__name__, **fields}

    def apply_precomputed(self, precomputed: dict[str, jax.Array], deterministic: bool = True) -> Compressed:
        """The learned stage on :meth:`precompute`'s arrays (here: none, the stored slots as they are)."""
        missing = sorted({"tokens", "mask"} - set(precomputed))
        if missing:
            raise ValueError(f"precomputed compressor arrays lack {missing} (have {sorted(precomputed)})")
        return Compressed(tokens=precomputed["tokens"], mask=precomputed["mask"].astype(bool))


_REGISTRY: dict[str, type[CompressorModule]] = {}


def register(name: str) -> Callable[[type[CompressorModule]], type[CompressorModule]]:
    """Class decorator adding a compressor module to the registry under ``name``."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"compressor {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    """Registered compressor names, sorted."""
    return sorted(_REGISTRY)


def check_tokens(tokens: jax.Array) -> None:
    """Static shape check shared by all compressors: tokens must be [B, T, H, W, D]."""
    if tokens.ndim != 5:
        raise ValueError(f"compressor expects tokens [B, T, H, W, D], got shape {tuple(tokens.shape)}")


@dataclasses.dataclass(frozen=True)
class Compressor:
    """A registered method plus its config; build modules or call it functionally."""

    name: str
    module_cls: type[CompressorModule]
    cfg: dict[str, Any]

    def module(self, budget: int) -> CompressorModule:
        """The linen module for this method at ``budget`` output slots."""
        if int(budget) < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        return self.module_cls(budget=int(budget), **self.cfg)

    def init(self, key: jax.Array, tokens: jax.Array, *, budget: int) -> dict:
        """Parameters of the method (an empty dict for parameter-free methods)."""
        check_tokens(tokens)
        return _jitted_init(self.module(budget), key, tokens)

    def __call__(self, tokens: jax.Array, *, key: jax.Array, budget: int, params: dict | None = None,
                 deterministic: bool = True) -> Compressed:
        """tokens [B, T, H, W, D] -> Compressed(tokens [B, M, D], mask [B, M], aux); M = budget."""
        check_tokens(tokens)
        return _jitted_apply(self.module(budget), {} if params is None else params, tokens, key, deterministic)

    def precompute(self, tokens: jax.Array, *, keys: jax.Array, budget: int) -> dict[str, jax.Array]:
        """The parameter-free stage of every video with its own key (so a video's result does not
        depend on its batch): tokens [B, T, H, W, D], keys [B] → ``{name: [B, ...]}``."""
        check_tokens(tokens)
        if keys.shape[:1] != tokens.shape[:1]:
            raise ValueError(f"precompute needs one key per video: keys {tuple(keys.shape)}, tokens "
                             f"{tuple(tokens.shape)}")
        return _jitted_precompute(self.module(budget), tokens, keys)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_init(module: CompressorModule, key: jax.Array, tokens: jax.Array) -> dict:
    k_params, k_rng = jax.random.split(key)
    return module.init({"params": k_params, RNG_STREAM: k_rng}, tokens).get("params", {})


@functools.partial(jax.jit, static_argnums=(0, 4))
def _jitted_apply(module: CompressorModule, params, tokens, key, deterministic: bool) -> Compressed:
    return module.apply({"params": params}, tokens, deterministic=deterministic, rngs={RNG_STREAM: key})


@functools.partial(jax.jit, static_argnums=0)
def _jitted_precompute(module: CompressorModule, tokens, keys) -> dict:
    def one(x, key):
        out = module.apply({}, x[None], method=type(module).precompute, rngs={RNG_STREAM: key})
        return jax.tree.map(lambda a: a[0], out)

    return jax.vmap(one)(tokens, keys)


def cfg_from_json(text: str, what: str) -> dict[str, Any]:
    """A compressor config given as a JSON object (a flag or config value named ``what``)."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} must be a JSON object, got {text!r}")
    return cfg


def get(name: str, **cfg: Any) -> Compressor:
    """Look up a compressor by name; ``cfg`` are the module's fields (besides ``budget``)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown compressor {name!r}; known: {', '.join(names())}")
    cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(cls)} - {"budget", "parent", "name"}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise TypeError(f"compressor {name!r} got unknown config keys {unknown}; accepted: {sorted(fields)}")
    return Compressor(name=name, module_cls=cls, cfg=dict(cfg))
