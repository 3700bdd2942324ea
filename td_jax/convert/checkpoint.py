"""Converted models on disk: an Orbax params checkpoint plus ``model.json``.

Layout of ``out``::

    out/model.json   {"kind": "Qwen2LM" | "VisionTower" | "VideoLLM", "config": {...}, "source": hf_dir}
    out/params/      Orbax StandardCheckpointer tree of the params (+ checksums.json)

``load_converted(out)`` rebuilds the module from ``model.json`` and restores the params
(optionally straight onto a sharding tree) after checking them against ``params/checksums.json``
(``td_jax.checksums``: a damaged or truncated file is a ``CheckpointError`` naming it; a
directory converted before checksums existed loads unverified, with a warning).  ``read_model(path)`` reads just the architecture
from ``model.json``, a directory holding one, or a training checkpoint's metadata (which
stores ``{"model": {"kind", "config"}}`` next to the experiment config).
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from td_jax import checksums

from td_jax.models import configs as C
from td_jax.models.llm import Qwen2LM
from td_jax.models.td_compat import TDCompatConfig
from td_jax.models.vit import VisionTower
from td_jax.models.vlm import VideoLLM

_KINDS = {"Qwen2LM": Qwen2LM, "VisionTower": VisionTower, "VideoLLM": VideoLLM}


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(kind: str, d: dict):
    """Inverse of :func:`config_to_dict` for the config class of ``kind``."""
    if kind == "Qwen2LM":
        return C.LLMConfig(**d)
    if kind == "VisionTower":
        return C.VisionConfig(**d)
    if kind == "VideoLLM":
        d = dict(d)
        d["llm"] = C.LLMConfig(**d["llm"])
        d["vision"] = None if d["vision"] is None else C.VisionConfig(**d["vision"])
        d["td_compat"] = None if d.get("td_compat") is None else TDCompatConfig(**d["td_compat"])
        d["compressor_cfg"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in d["compressor_cfg"])
        for k in ("pixel_mean", "pixel_std"):
            d[k] = tuple(d[k])
        return C.VLMConfig(**d)
    raise ValueError(f"unknown model kind {kind!r}; known: {sorted(_KINDS)}")


def read_json(file: str):
    """The JSON in ``file`` (ValueError naming the file if it is not valid JSON)."""
    with open(file) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from None


def model_record(module) -> dict:
    """``{"kind": ..., "config": {...}}``: the JSON record of a module's architecture."""
    kind = type(module).__name__
    if kind not in _KINDS:
        raise TypeError(f"cannot describe a {kind}; expected one of {sorted(_KINDS)}")
    return {"kind": kind, "config": config_to_dict(module.cfg)}


def module_from_record(record: dict, *, source: str = "model record"):
    """The module a :func:`model_record` describes (ValueError naming ``source`` if malformed)."""
    if not isinstance(record, dict) or "kind" not in record or "config" not in record:
        raise ValueError(f"{source}: expected {{'kind': ..., 'config': {{...}}}}, got keys "
                         f"{sorted(record) if isinstance(record, dict) else type(record).__name__}")
    try:
        cfg = config_from_dict(record["kind"], record["config"])
    except TypeError as e:
        raise ValueError(f"{source}: config does not match {record['kind']}: {e}") from None
    return _KINDS[record["kind"]](cfg)


def read_model(path: str):
    """The module described by ``path``: a ``model.json`` file, a directory holding one
    (written by :func:`save_converted` / ``launch.convert``), or a JSON file with a ``"model"``
    entry (a training checkpoint's metadata)."""
    path = os.path.expandvars(os.path.expanduser(path))
    file = os.path.join(path, "model.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: no model.json (not written by save_converted / launch.convert)")
    d = read_json(file)
    if isinstance(d, dict) and "kind" not in d and isinstance(d.get("model"), dict):
        d = d["model"]
    return module_from_record(d, source=file)


def save_converted(out: str, module, params, *, source: str = "", overwrite: bool = False) -> None:
    """Write ``module``'s config and ``params`` under directory ``out``."""
    out = os.path.abspath(os.path.expandvars(os.path.expanduser(out)))
    kind = type(module).__name__
    if kind not in _KINDS:
        raise TypeError(f"cannot save a {kind}; expected one of {sorted(_KINDS)}")
    if os.path.exists(os.path.join(out, "params")) and not overwrite:
        raise ValueError(f"{out}/params already exists (pass overwrite=True to replace it)")
    os.makedirs(out, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(out, "params"), params, force=overwrite)
    ckptr.wait_until_finished()
    checksums.write_manifest(os.path.join(out, "params"))
    tmp = os.path.join(out, "model.json.tmp")          # written last: its presence means a complete save
    with open(tmp, "w") as f:
        json.dump({**model_record(module), "source": source}, f, indent=1)
    os.replace(tmp, os.path.join(out, "model.json"))


def load_converted(out: str, shardings=None):
    """(module, params) from a directory written by :func:`save_converted`.

    ``shardings``: optional tree of ``jax.sharding.Sharding`` matching the params, to
    restore each array directly onto its devices.
    """
    out = os.path.abspath(os.path.expandvars(os.path.expanduser(out)))
    module = read_model(out)
    if not os.path.isdir(os.path.join(out, "params")):
        raise FileNotFoundError(f"{out}: no params/ directory (an incomplete launch.convert output?)")
    verify_params(out)
    ckptr = ocp.StandardCheckpointer()
    meta_tree = ckptr.metadata(os.path.join(out, "params"))
    tree = getattr(meta_tree, "item_metadata", meta_tree)
    tree = getattr(tree, "tree", tree)
    if shardings is None:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
    else:
        target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), tree, shardings)
    params = ckptr.restore(os.path.join(out, "params"), target)
    return module, params


def verify_params(out: str) -> None:
    """Checks ``out/params`` against its checksum manifest (:class:`td_jax.checksums.CheckpointError`
    naming the damaged file); a conversion written before manifests existed is only warned about."""
    params = os.path.join(out, "params")
    if not os.path.exists(os.path.join(params, checksums.MANIFEST)):
        logging.warning("%s has no %s (converted before checksums existed): loading it unverified", params,
                        checksums.MANIFEST)
        return
    checksums.verify_manifest(params)


def _metadata_tree(path: str):
    meta = ocp.StandardCheckpointer().metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    return getattr(tree, "tree", tree)


def saved_params(state_dir: str) -> dict:
    """Shapes and dtypes (``jax.ShapeDtypeStruct``) of the ``params`` a training checkpoint's
    ``state`` item holds, read from its metadata (no array is loaded)."""
    from etils import epath

    if not epath.Path(state_dir).is_dir():          # local or gs://
        raise FileNotFoundError(f"{state_dir}: no such checkpoint item")
    tree = _metadata_tree(state_dir)
    if not isinstance(tree, dict) or "params" not in tree:
        raise ValueError(f"{state_dir}: not a training state (no 'params')")
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree["params"])


def restore_params(state_dir: str, abstract: dict, shardings) -> dict:
    """Only ``params`` (only the top-level entries ``abstract`` names) of a training checkpoint's
    ``state`` item, each array restored directly onto its sharding; the optimizer state is
    never read."""
    target = {"params": jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                     abstract, shardings)}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype), target)
    out = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
    return out["params"]
