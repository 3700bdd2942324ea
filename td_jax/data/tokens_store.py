"""Precomputed visual tokens — or a compressor's precomputed stage — in ArrayRecord files.

Layout of a store directory::

    DIR/meta.json                 {"arrays": {name: {"shape": [...], "dtype": ...}}, "counts": {split: n},
                                   "embed": ..., "source": ..., "compressor": {...} (compressed stores)}
    DIR/{split}.array_record      one record per example

A record is a msgpack map (``flax.serialization``, no pickle) of the arrays named in
``meta["arrays"]`` and the text fields ``question``, ``options [n]`` (str), ``answer``,
``family``, ``family_id``, ``id``.
A store of tower tokens has one array, ``visual_tokens [T, h, w, D]`` (older stores give
only ``"token_shape"``); a compressed store (``launch/extract_tokens.py --compressor=...``)
has the compressor's parameter-free stage, ``pre/<name>`` per array
(``CompressorModule.precompute``), which the pipeline serves under the same names.
"""
from __future__ import annotations

import io
import itertools
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from array_record.python import array_record_module
from flax import serialization

TEXT_KEYS = ("question", "options", "answer", "family", "family_id", "id")
RECORD_KEYS = ("visual_tokens",) + TEXT_KEYS
PRE = "pre/"


def array_specs(meta: Mapping[str, Any]) -> dict[str, dict]:
    """``{name: {"shape", "dtype"}}`` of a store's per-example arrays (from its meta.json)."""
    if "arrays" in meta:
        return dict(meta["arrays"])
    if "token_shape" in meta:
        return {"visual_tokens": {"shape": list(meta["token_shape"]), "dtype": meta.get("dtype", "float16")}}
    raise ValueError(f"token store meta has neither 'arrays' nor 'token_shape': keys {sorted(meta)}")


def split_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}.array_record")


def encode_record(example: Mapping[str, Any], dtype: str = "float16") -> bytes:
    """Serialise one example: the text fields (``TEXT_KEYS``) and every array — ``visual_tokens``
    ``[T, h, w, D]`` (cast to ``dtype``) and/or ``pre/<name>`` arrays (kept as they are) —
    as msgpack (``flax.serialization``: arrays as raw bytes, no pickle; ~50x faster to read
    back than an ``.npz`` of the same arrays)."""
    missing = [k for k in TEXT_KEYS if k not in example]
    arrays = {k: np.asarray(v) for k, v in example.items() if k == "visual_tokens" or k.startswith(PRE)}
    if missing or not arrays:
        raise KeyError(f"token record is missing keys {missing or ['visual_tokens or pre/<name>']}; needs "
                       f"{list(TEXT_KEYS)} and arrays")
    if "visual_tokens" in arrays:
        if arrays["visual_tokens"].ndim != 4:
            raise ValueError(f"visual_tokens must be [T, h, w, D], got shape {arrays['visual_tokens'].shape}")
        arrays["visual_tokens"] = arrays["visual_tokens"].astype(dtype)
    text = {"question": str(example["question"]), "options": [str(o) for o in example["options"]],
            "answer": int(example["answer"]), "family": str(example["family"]),
            "family_id": int(example["family_id"]), "id": str(example["id"])}
    return serialization.msgpack_serialize({**arrays, **text})


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_record` (also reads the ``.npz`` records of older stores)."""
    if data[:4] == b"PK\x03\x04":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            out = {k: z[k] for k in z.files if k == "visual_tokens" or k.startswith(PRE)}
            out.update({"question": str(z["question"]), "options": [str(o) for o in z["options"]],
                        "answer": int(z["answer"]), "family": str(z["family"]), "family_id": int(z["family_id"]),
                        "id": str(z["id"])})
            return out
    try:
        rec = serialization.msgpack_restore(data)
    except Exception as e:   # noqa: BLE001  any parse failure of a damaged record
        raise ValueError(f"token record cannot be decoded ({type(e).__name__}: {e})") from None
    missing = [k for k in TEXT_KEYS if k not in rec]
    if missing:
        raise ValueError(f"token record lacks {missing}")
    return rec


def write_meta(directory: str, meta: Mapping[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "meta.json"), "w") as f:
        json.dump(dict(meta), f, indent=1)


def read_meta(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no token store at {directory} (missing {path}); run launch/extract_tokens.py")
    with open(path) as f:
        return json.load(f)


def narrow_ints(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays on the host; integer arrays that fit in int16 (cluster ids) as int16."""
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.dtype.kind == "i" and v.size and -2 ** 15 <= v.min() and v.max() < 2 ** 15:
            v = v.astype(np.int16)
        out[k] = v
    return out


def extract_split(examples: Iterable, outputs: Sequence[tuple[str, Callable | None]], split: str,
                  embed_fn: Callable, *, batch_size: int = 16, dtype: str = "float16",
                  progress: Callable[[int], None] | None = None) -> tuple[int, list[dict[str, dict]]]:
    """Embed ``(meta, frames [T,R,R,3])`` pairs in batches with ``embed_fn(frames [B,T,R,R,3]) ->
    [B,T,h,w,D]`` once, and write ``DIR/{split}.array_record`` of every output ``(DIR, compress_fn)``.

    ``compress_fn(tokens [B,T,h,w,D], index [B] int) -> {name: [B, ...]}`` stores a
    compressor's precomputed stage (as ``pre/<name>``, integer arrays that fit as int16); None
    stores the tokens themselves.  A batch's results are read back only after the next batch
    has been read and dispatched, so reading the videos overlaps the device work.
    ``index`` is each example's position in the split (to draw its per-video key).
    ``progress(n)`` is called after each batch.  Every file is written under a temporary name
    and renamed when complete.  Returns (count, ``[{array name: {"shape", "dtype"}}]`` per output).
    """
    specs: list[dict[str, dict]] = [{} for _ in outputs]
    paths = [split_path(d, split) for d, _ in outputs]
    for d, _ in outputs:
        os.makedirs(d, exist_ok=True)
    writers = [array_record_module.ArrayRecordWriter(p + ".tmp", "group_size:1") for p in paths]
    buf, done, pending = [], 0, None

    def write(batch):
        # Blocks on a batch's results and writes its records; runs after the next batch has been
        # read and dispatched, so reading overlaps the (asynchronously dispatched) device work.
        metas, n, tok, results, end = batch
        for j, res in enumerate(results):
            if res is None:
                arrays = {"visual_tokens": np.asarray(tok)[:n]}
            else:
                arrays = {PRE + k: v[:n] for k, v in narrow_ints(res).items()}
            for k, v in arrays.items():
                specs[j][k] = {"shape": list(v.shape[1:]), "dtype": dtype if k == "visual_tokens" else str(v.dtype)}
            for i, meta in enumerate(metas):
                writers[j].write(encode_record({**meta, **{k: v[i] for k, v in arrays.items()}}, dtype))
        if progress is not None:
            progress(end)

    try:
        for item in itertools.chain(examples, [None]):
            if item is not None:
                buf.append(item)
            if not buf or (len(buf) < batch_size and item is not None):
                continue
            n = len(buf)
            frames = np.stack([f for _, f in buf])
            if n < batch_size:      # one compiled shape: pad the last batch with copies
                frames = np.concatenate([frames, np.repeat(frames[-1:], batch_size - n, 0)])
            tok = embed_fn(frames)
            if tok.ndim != 5 or tok.shape[0] != batch_size:
                raise ValueError(f"embed_fn must return [B, T, h, w, D] with B={batch_size}, got {tok.shape}")
            index = np.arange(done, done + batch_size)
            results = [None if fn is None else fn(tok, index) for _, fn in outputs]
            if pending is not None:
                write(pending)
            done += n
            pending = ([m for m, _ in buf], n, tok, results, done)
            buf = []
        if pending is not None:
            write(pending)
    finally:
        for w in writers:
            w.close()
    for p in paths:
        os.replace(p + ".tmp", p)  # a crashed extraction never leaves a half file under the real name
    return done, specs
