"""Build a token store: a split's videos through a frozen tower, then (optionally) a
compressor's parameter-free stage, once per video (``launch/extract_tokens.py``).

    meta = build_store("/data/stores/td8", data_cfg, ["train", "test"], embed=("patch", {...}),
                       compressor={"name": "token_dynamics", "budget": 8, "cfg": {"iters": 20}, "seed": 0})

Each video's compression key is ``fold_in(key(seed), its position in the split)``, so a
stored stage does not depend on batching.  Splits are written atomically and recorded in
``meta.json`` one by one: a store cut short by a kill is completed by running the same
call again (finished splits are skipped); a store built with other settings is refused.
"""
from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from td_jax.data import pipeline, tokens_store


def make_embed(spec: str, **kwargs) -> tuple[Callable, dict]:
    """(embed_fn(frames [B,T,R,R,3] uint8) -> tokens [B,T,h,w,D], its JSON description).

    ``spec``: "patch" — the fixed patch embedding (``kwargs``: those of
    ``td_jax.data.patch_embed.patch_embed`` but ``frames``); "module:function" — that callable.
    """
    import importlib

    import jax

    if spec == "patch":
        from td_jax.data.patch_embed import make_patch_embed
        meta = {"embed": "patch", **kwargs}
        if kwargs.get("tower"):                   # the weights' digest: a retrained tower is another store
            from td_jax.data import tower

            meta["tower_sha1"] = tower.digest(kwargs["tower"])
        return jax.jit(make_patch_embed(**kwargs)), meta
    if ":" not in spec:
        raise ValueError(f"embed must be 'patch' or 'module:function', got {spec!r}")
    mod, fn = spec.split(":", 1)
    try:
        return getattr(importlib.import_module(mod), fn), {"embed": spec}
    except (ImportError, AttributeError) as e:
        raise ValueError(f"embed {spec!r}: {e}") from None


def compressor_meta(name: str, budget: int, cfg: Mapping[str, Any], seed: int, num_frames: int) -> dict:
    """The JSON record of a compressor stage (``stage`` says what determines its output)."""
    from td_jax import compressors

    module = compressors.get(name, **dict(cfg)).module(budget)
    return {"name": name, "budget": int(budget), "cfg": dict(cfg), "seed": int(seed), "num_frames": int(num_frames),
            "stage": module.stage_spec(num_frames)}


def make_compress(meta: Mapping[str, Any]) -> Callable:
    """``fn(tokens [B,T,h,w,D], index [B]) -> {name: [B, ...]}`` for a :func:`compressor_meta`."""
    import jax

    from td_jax import compressors

    comp = compressors.get(meta["name"], **dict(meta["cfg"]))
    base = jax.random.key(int(meta["seed"]))
    keys_of = jax.jit(jax.vmap(lambda i: jax.random.fold_in(base, i)))

    def fn(tokens, index):
        return comp.precompute(tokens, keys=keys_of(np.asarray(index, np.int32)), budget=meta["budget"])

    return fn


def build_store(directory: str, data_cfg: Mapping[str, Any], splits: Sequence[str], *, embed: tuple[str, dict],
                compressor: Mapping[str, Any] | None = None, batch_size: int = 16, dtype: str = "float16",
                log: Callable[[str], None] = print) -> dict:
    """Writes (or completes) the store at ``directory``; returns its meta (see the module docstring).

    ``data_cfg``: pipeline source options (``source``, ``tfds_name``, ``data_dir``,
    ``folder_jsonl``, ``num_frames``, ``resolution``, ``skip_corrupt``, ...).
    ``embed``: (spec, kwargs) for :func:`make_embed`.  ``compressor``: None (store the tower's
    tokens) or ``{"name", "budget", "cfg", "seed"}``.
    """
    return build_stores([(directory, compressor, splits)], data_cfg, embed=embed, batch_size=batch_size,
                        dtype=dtype, log=log)[0]


def _key(name: str, value: Any) -> Any:
    """What must match for a store to be reused: the settings, and of a compressor only its
    stored stage (arms whose stages are equal share one store, whichever arm built it)."""
    value = json.loads(json.dumps(value))
    if name == "compressor" and isinstance(value, dict):
        return {"stage": value.get("stage"), "num_frames": value.get("num_frames")}
    return value


def build_stores(jobs: Sequence[tuple[str, Mapping[str, Any] | None, Sequence[str]]], data_cfg: Mapping[str, Any],
                 *, embed: tuple[str, dict], batch_size: int = 16, dtype: str = "float16",
                 limits: Mapping[str, int] | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """:func:`build_store` for several stores ``(directory, compressor, splits)`` of one source in
    one pass per split: every video is read and embedded once, then each store's stage runs.
    ``limits``: ``{split: n}`` stores only the split's first n videos (recorded in the meta).
    Returns their metas."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limits = {str(k): int(v) for k, v in (limits or {}).items()}
    if any(v < 1 for v in limits.values()):
        raise ValueError(f"limits must be >= 1 videos per split, got {limits}")
    embed_fn, embed_meta = make_embed(embed[0], **embed[1])
    src = {k: v for k, v in dict(data_cfg).items() if v and k in ("source", "tfds_name", "tfds_dir", "data_dir",
                                                                   "folder_jsonl", "video_root", "num_frames",
                                                                   "resolution", "skip_corrupt")}  # unset = default
    common: dict[str, Any] = {"source": src, **embed_meta, "limits": limits}   # ({} = whole splits)
    families = pipeline.family_names(src)
    if families:
        common["families"] = families
    t = None
    stores = []
    for directory, compressor, splits in jobs:
        want = dict(common)
        compress_fn = None
        if compressor is not None:
            if t is None:
                t = int(src.get("num_frames") or next(pipeline.iter_examples(src, splits[0]))[1].shape[0])
            want["compressor"] = compressor_meta(compressor["name"], compressor["budget"], compressor.get("cfg", {}),
                                                 compressor.get("seed", 0), t)
            fn = make_compress(want["compressor"])
            compress_fn = fn            # device arrays: the store reads them back batch by batch
        meta_path = os.path.join(directory, "meta.json")
        meta: dict[str, Any] = tokens_store.read_meta(directory) if os.path.isfile(meta_path) else {}
        stale = {k: (meta.get(k), v) for k, v in want.items() if k in meta and _key(k, meta[k]) != _key(k, v)}
        if stale:
            raise ValueError(f"the store at {directory} was built with other settings {stale} (stored, wanted): "
                             f"delete it or write elsewhere")
        stores.append({"dir": directory, "want": want, "meta": meta, "fn": compress_fn, "splits": list(splits)})
    order = [s for s in ("train", "validation", "test") if any(s in st["splits"] for st in stores)]
    order += sorted({s for st in stores for s in st["splits"]} - set(order))
    for split in order:
        todo = [st for st in stores if split in st["splits"] and not (
            split in st["meta"].get("counts", {}) and os.path.isfile(tokens_store.split_path(st["dir"], split)))]
        if not todo:
            continue
        t0, last = time.time(), [time.time()]
        names = ", ".join(os.path.basename(st["dir"]) for st in todo)

        def progress(n, split=split, t0=t0, names=names):
            if time.time() - last[0] > 30:
                last[0] = time.time()
                log(f"  {split} -> {names}: {n} videos ({n / (time.time() - t0):.0f}/s)")

        examples = pipeline.iter_examples(src, split)
        if split in limits:
            examples = itertools.islice(examples, limits[split])
        n, specs = tokens_store.extract_split(examples, [(st["dir"], st["fn"]) for st in todo],
                                              split, embed_fn, batch_size=batch_size, dtype=dtype, progress=progress)
        for st, spec in zip(todo, specs):
            meta = st["meta"]
            if meta.get("arrays", spec) != spec:
                raise ValueError(f"{st['dir']} split {split}: arrays {spec} differ from the store's {meta['arrays']}")
            meta.update(st["want"])
            meta["arrays"] = spec
            meta.setdefault("counts", {})[split] = n
            tmp = os.path.join(st["dir"], "meta.json.tmp")
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1)
            os.replace(tmp, os.path.join(st["dir"], "meta.json"))
        log(f"  {split} -> {names}: {n} videos in {time.time() - t0:.0f}s")
    return [st["meta"] for st in stores]
