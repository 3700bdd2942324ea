"""Read Hugging Face safetensors (single file or sharded with an index) into numpy.

A small reader of the safetensors format (8-byte little-endian header size, JSON header,
raw little-endian tensor bytes) so bfloat16 loads through ``ml_dtypes`` without torch;
no pickle is ever involved.
"""
from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as numpy arrays (memory-mapped)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        lo, hi = info["data_offsets"]
        dt = np.dtype(_DTYPES[info["dtype"]])
        out[name] = np.frombuffer(data[lo:hi], dtype=dt).reshape(info["shape"])
    return out


def read_checkpoint(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face model directory.

    Reads ``model.safetensors``, or the shards listed in ``model.safetensors.index.json``.
    ``.bin`` (pickle) checkpoints are refused.
    """
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        out = {}
        for shard in sorted(set(weight_map.values())):
            tensors = read_safetensors(os.path.join(hf_dir, shard))
            out.update(tensors)
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise ValueError(f"{index}: tensors listed but not found in the shards: {missing[:10]}")
        return out
    if os.path.exists(single):
        return read_safetensors(single)
    if any(f.endswith(".bin") for f in os.listdir(hf_dir)):
        raise ValueError(f"{hf_dir}: only pickle (.bin) weights found; convert them to safetensors first "
                         "(this loader never unpickles)")
    raise ValueError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
