"""Precomputed visual tokens in ArrayRecord files.

Layout of a store directory::

    DIR/meta.json                 {"token_shape": [T, h, w, D], "dtype": "float16", "embed": ..., "source": ...}
    DIR/{split}.array_record      one record per example

A record is an ``.npz`` (no pickle) of ``visual_tokens [T, h, w, D]``, ``question``,
``options [n]`` (str), ``answer``, ``family``, ``family_id`` and ``id``.
"""
from __future__ import annotations

import io
import itertools
import json
import os
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from array_record.python import array_record_module

RECORD_KEYS = ("visual_tokens", "question", "options", "answer", "family", "family_id", "id")


def split_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}.array_record")


def encode_record(example: Mapping[str, Any], dtype: str = "float16") -> bytes:
    """Serialise one example (see module docstring for the keys)."""
    missing = [k for k in RECORD_KEYS if k not in example]
    if missing:
        raise KeyError(f"token record is missing keys {missing}; needs {list(RECORD_KEYS)}")
    tok = np.asarray(example["visual_tokens"])
    if tok.ndim != 4:
        raise ValueError(f"visual_tokens must be [T, h, w, D], got shape {tok.shape}")
    buf = io.BytesIO()
    np.savez(buf, visual_tokens=tok.astype(dtype), question=np.str_(example["question"]),
             options=np.array([str(o) for o in example["options"]]), answer=np.int32(example["answer"]),
             family=np.str_(example["family"]), family_id=np.int32(example["family_id"]), id=np.str_(example["id"]))
    return buf.getvalue()


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_record` (strings come back as ``str``)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {
            "visual_tokens": z["visual_tokens"],
            "question": str(z["question"]),
            "options": [str(o) for o in z["options"]],
            "answer": int(z["answer"]),
            "family": str(z["family"]),
            "family_id": int(z["family_id"]),
            "id": str(z["id"]),
        }


def write_split(directory: str, split: str, examples: Iterable[Mapping[str, Any]], *, dtype: str = "float16") -> int:
    """Write ``examples`` to ``DIR/{split}.array_record``; returns the number written."""
    os.makedirs(directory, exist_ok=True)
    path = split_path(directory, split)
    tmp = path + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    n = 0
    try:
        for ex in examples:
            writer.write(encode_record(ex, dtype))
            n += 1
    finally:
        writer.close()
    os.replace(tmp, path)  # a crashed extraction never leaves a half file under the real name
    return n


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


def extract_split(examples: Iterable, directory: str, split: str, embed_fn: Callable, *, batch_size: int = 16,
                  dtype: str = "float16") -> tuple[int, tuple[int, ...]]:
    """Embed ``(meta, frames [T,R,R,3])`` pairs in batches with ``embed_fn(frames [B,T,R,R,3]) ->
    [B,T,h,w,D]`` and write them to ``DIR/{split}.array_record``.  Returns (count, token shape)."""
    shape: list[tuple[int, ...]] = []

    def records():
        buf = []
        for item in itertools.chain(examples, [None]):
            if item is not None:
                buf.append(item)
            if buf and (len(buf) == batch_size or item is None):
                tok = np.asarray(embed_fn(np.stack([f for _, f in buf])))
                if tok.ndim != 5 or tok.shape[0] != len(buf):
                    raise ValueError(f"embed_fn must return [B, T, h, w, D] with B={len(buf)}, got {tok.shape}")
                shape[:] = [tok.shape[1:]]
                for (meta, _), t in zip(buf, tok):
                    yield {**meta, "visual_tokens": t}
                buf = []

    n = write_split(directory, split, records(), dtype=dtype)
    return n, (tuple(int(s) for s in shape[0]) if shape else ())
