"""One interface for every token-reduction method.

A compressor maps a batch of videos' visual tokens to a fixed number ``M`` of tokens:

    tokens [B, T, H, W, D] (+ mask [B, T, H, W] or [B, T]) ──compressor(budget=M)──▶
        Compressed(tokens [B, M, D], mask [B, M], aux)

``M`` is static (jit-friendly); ``mask`` marks real tokens (adaptive methods leave unused
slots False); ``aux`` holds method extras (the dynamics map, kept indices, merge sizes).

The input ``mask`` (None, ``[B, T, H, W]`` bool or per-frame ``[B, T]`` bool; True = real
token) lets a batch hold videos of different lengths, zero-padded to T frames.  Every
method excludes masked tokens and never marks an output slot fed only by padding as real;
:func:`token_mask` turns any accepted form into ``[B, T, H, W]``.

Each method is a ``flax.linen`` module subclassing :class:`CompressorModule`; randomness
comes from the ``"compress"`` RNG stream (``self.make_rng("compress")``), parameters (if
any) from ``"params"``.  :class:`Compressor` wraps a module class with its config and gives
the functional call ``compressor(tokens, key=..., budget=..., mask=..., params=...)``.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import numbers
from typing import Any, Callable, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from td_jax.cluster import RANGE_EXP, ZERO_EXP, exact_rows, is_traced, ldexp_exact, shift_exact

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
    """Base class: ``__call__(tokens [B,T,H,W,D], deterministic=True, mask=None) -> Compressed``.

    ``budget`` is the static number of output slots M; ``mask`` is None, ``[B, T, H, W]``
    or ``[B, T]`` bool (True = real token, see :func:`token_mask`).

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

    def __call__(self, tokens: jax.Array, deterministic: bool = True,
                 mask: jax.Array | None = None) -> Compressed:  # pragma: no cover
        raise NotImplementedError

    # Tokens scaled by any c > 0 give output tokens scaled by c and the same mask and aux
    # (selections and means chosen by scale-free criteria), unless the call passes one of
    # SCALE_DEPENDENT_INPUTS (e.g. a query).  A method says so explicitly; the functional call
    # uses it to run such a method on tokens of extreme scale exactly (Compressor.__call__).
    SCALE_EQUIVARIANT: ClassVar[bool] = False
    SCALE_DEPENDENT_INPUTS: ClassVar[frozenset] = frozenset()

    def scale_equivariant(self, inputs: frozenset = frozenset()) -> bool:
        """Whether this method is scale-equivariant given the extra keyword ``inputs`` of the call."""
        return self.SCALE_EQUIVARIANT and not (inputs & self.SCALE_DEPENDENT_INPUTS)

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


def token_mask(mask: jax.Array | None, tokens_shape: tuple[int, ...]) -> jax.Array:
    """The real-token mask as ``[B, T, H, W]`` bool for tokens of shape ``[B, T, H, W, D]``.

    mask: None (every token real), ``[B, T, H, W]`` or per-frame ``[B, T]`` (broadcast over
      the frame's H*W cells); any dtype, nonzero = real.  Other shapes raise ValueError.
    """
    b, t, h, w = (int(v) for v in tokens_shape[:4])
    if mask is None:
        return jnp.ones((b, t, h, w), bool)
    shape = tuple(mask.shape)
    if shape == (b, t):
        return jnp.broadcast_to(jnp.asarray(mask).astype(bool)[:, :, None, None], (b, t, h, w))
    if shape == (b, t, h, w):
        return jnp.asarray(mask).astype(bool)
    raise ValueError(f"compressor mask must be [B, T, H, W]={[b, t, h, w]} or per-frame [B, T]={[b, t]} "
                     f"for tokens {list(tokens_shape)}, got {list(shape)}")


def check_budget(budget: Any) -> int:
    """The slot count M as an int: a positive integer (an integral float such as 16.0 is
    accepted); a fractional or non-numeric budget raises (never rounded)."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise TypeError(f"budget must be an integer number of slots, got {type(budget).__name__} {budget!r}; "
                        f"turn '0.07%' or 0.01 into a count with td_jax.compressors.resolve_budget")
    if isinstance(budget, numbers.Integral):
        m = int(budget)
    else:
        if not float(budget).is_integer():
            raise ValueError(f"budget must be a whole number of slots, got {budget!r}; fractions of the tokens "
                             f"go through td_jax.compressors.resolve_budget('0.07%', n_tokens)")
        m = int(budget)
    if m < 1:
        raise ValueError(f"budget must be >= 1, got {budget!r}")
    return m


def accepts(module_cls: type, arg: str) -> bool:
    """Whether the module's ``__call__`` takes keyword ``arg`` (e.g. ``mask``, ``saliency``)."""
    params = inspect.signature(module_cls.__call__).parameters
    return arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


@dataclasses.dataclass(frozen=True)
class Compressor:
    """A registered method plus its config; build modules or call it functionally."""

    name: str
    module_cls: type[CompressorModule]
    cfg: dict[str, Any]

    def module(self, budget: int) -> CompressorModule:
        """The linen module for this method at ``budget`` output slots."""
        return self.module_cls(budget=check_budget(budget), **self.cfg)

    def _call_kwargs(self, tokens, mask, inputs) -> dict:
        """Validated keyword inputs for the module call (mask + method-specific extras)."""
        check_tokens(tokens)
        kw = dict(inputs)
        if mask is not None:
            kw["mask"] = token_mask(mask, tokens.shape)
        for arg in kw:
            if not accepts(self.module_cls, arg):
                what = "masks (padded videos)" if arg == "mask" else f"the input {arg!r}"
                raise ValueError(f"compressor {self.name!r} does not take {what}")
        return kw

    def init(self, key: jax.Array, tokens: jax.Array, *, budget: int, mask: jax.Array | None = None,
             **inputs: jax.Array) -> dict:
        """Parameters of the method (an empty dict for parameter-free methods)."""
        kw = self._call_kwargs(tokens, mask, inputs)
        return _jitted_init(self.module(budget), key, tokens, kw)

    def __call__(self, tokens: jax.Array, *, key: jax.Array, budget: int, mask: jax.Array | None = None,
                 params: dict | None = None, deterministic: bool = True, **inputs: jax.Array) -> Compressed:
        """tokens [B, T, H, W, D] -> Compressed(tokens [B, M, D], mask [B, M], aux); M = budget.

        mask: None, [B, T, H, W] or [B, T] bool (True = real token).  ``inputs`` are a
        method's optional extra arrays (e.g. ``saliency=`` for visionzip / fastvid /
        holitom, ``query=`` for prune / dycoke); a method that does not take one raises.
        """
        kw = self._call_kwargs(tokens, mask, inputs)
        module = self.module(budget)
        params = {} if params is None else params
        try:
            out, amax = _jitted_apply(module, params, tokens, key, deterministic, kw)
        except (flax.errors.ScopeCollectionNotFound, flax.errors.ScopeParamNotFoundError) as e:
            if params:
                raise
            raise ValueError(f"compressor {self.name!r} has parameters: create them with "
                             f"params = compressor.init(key, tokens, budget={module.budget}) and pass params=params "
                             f"({type(e).__name__})") from None
        if is_traced(amax) or 2.0 ** RANGE_EXP[0] <= float(amax) < 2.0 ** RANGE_EXP[1]:
            return out
        return self._extreme_scale(module, params, tokens, key, deterministic, kw, out)

    def _extreme_scale(self, module, params, tokens, key, deterministic, kw, out) -> Compressed:
        """Tokens whose largest |element| is 0 or outside [2^-100, 2^112): subnormals (flushed to
        zero by XLA on CPU) or near the float32 maximum. All-zero tokens keep ``out``; a
        scale-equivariant parameter-free method runs on the tokens shifted by one exact power
        of two and its output tokens are shifted back; any other method raises."""
        _, top = (int(v) for v in exact_rows(tokens, kw.get("mask")))
        if top == ZERO_EXP:
            return out                                               # every real token is zero
        if params or not module.scale_equivariant(frozenset(kw) - {"mask"}):
            raise ValueError(f"compressor {self.name!r}: the tokens' largest |element| is about 2^{top}, outside "
                             f"[2^{RANGE_EXP[0]}, 2^{RANGE_EXP[1]}) where its float32 arithmetic holds (subnormals "
                             "flush to zero) and the method is not scale-equivariant: rescale the tokens first")
        shift = jnp.int32(-top)
        out, _ = _jitted_apply(module, params, shift_exact(tokens, shift).astype(tokens.dtype), key, deterministic, kw)
        return out.replace(tokens=ldexp_exact(out.tokens, -shift).astype(out.tokens.dtype))

    def precompute(self, tokens: jax.Array, *, keys: jax.Array, budget: int) -> dict[str, jax.Array]:
        """The parameter-free stage of every video with its own key (so a video's result does not
        depend on its batch): tokens [B, T, H, W, D], keys [B] → ``{name: [B, ...]}``."""
        check_tokens(tokens)
        if keys.shape[:1] != tokens.shape[:1]:
            raise ValueError(f"precompute needs one key per video: keys {tuple(keys.shape)}, tokens "
                             f"{tuple(tokens.shape)}")
        return _jitted_precompute(self.module(budget), tokens, keys)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_init(module: CompressorModule, key: jax.Array, tokens: jax.Array, kw: dict) -> dict:
    k_params, k_rng = jax.random.split(key)
    return module.init({"params": k_params, RNG_STREAM: k_rng}, tokens, **kw).get("params", {})


@functools.partial(jax.jit, static_argnums=(0, 4))
def _jitted_apply(module: CompressorModule, params, tokens, key, deterministic: bool, kw: dict):
    """The module's output and the largest |element| of the real tokens (float32; subnormals read as 0)."""
    out = module.apply({"params": params}, tokens, deterministic=deterministic, rngs={RNG_STREAM: key}, **kw)
    a = jnp.abs(tokens).astype(jnp.float32)
    if "mask" in kw:
        a = jnp.where(kw["mask"][..., None], a, 0.0)
    return out, jnp.max(a)


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
    # JSON has no tuples: arrays become tuples (module fields such as pool's out_hw must hash)
    return {k: _tuples(v) for k, v in cfg.items()}


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


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
