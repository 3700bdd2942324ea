"""Read Hugging Face safetensors (single file or sharded with an index) into numpy.

The format: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then
the raw little-endian tensor bytes, offsets relative to the end of the header.

Our own reader rather than ``safetensors.safe_open``, for a measured reason: it memory-maps
the data and hands out zero-copy views, so a 512 MiB file opens in 0.02 s and pages in on
use, where ``safe_open(framework="np")`` copies every tensor: 1.6 s (69x) and a peak RSS of
+1.0 GiB instead of +0.5 GiB (``experiments/benchmarks/safetensors_bench.py``,
``results/safetensors_bench.md``). Both return identical values, and a fuzz test checks that
whatever ``safe_open`` loads, this reader loads the same. bfloat16 / float8 come through
``ml_dtypes``; no pickle is ever involved.

The header is validated before anything is mapped, and every violation is a ``ValueError``
naming the file (and the tensor): header length within the file (and at most
:data:`MAX_HEADER_BYTES`), a JSON object without duplicate names, a known dtype, a shape
of non-negative integers, offsets that are non-negative integers, inside the data region,
equal to shape x itemsize and not overlapping another tensor's. Nothing is allocated in
proportion to what the header claims, only to what the file holds.
"""
from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E5M2": ml_dtypes.float8_e5m2, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024    # the safetensors library's own limit


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_header(path: str) -> tuple[dict, int, int]:
    """Validated ``(tensors, data_start, data_size)`` of a safetensors file.

    ``tensors``: ``{name: (dtype, shape tuple, begin, end)}`` with offsets relative to
    ``data_start``. Raises ``ValueError`` naming the file (and tensor) on any violation.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} exceeds the {size - 8} bytes after the length field "
                             "(truncated or not a safetensors file)")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        blob = f.read(n)
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - n
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: __metadata__ is a JSON {type(meta).__name__}, not an object")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise ValueError(f"{where}: entry is a JSON {type(info).__name__}, not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise ValueError(f"{where}: no {', '.join(missing)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ValueError(f"{where}: unsupported dtype {dtype!r} (known: {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ValueError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
                or offsets[0] < 0 or offsets[1] < offsets[0]):
            raise ValueError(f"{where}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
        begin, end = offsets
        if end > data_size:
            raise ValueError(f"{where}: data_offsets [{begin}, {end}] run past the {data_size} data bytes "
                             "(truncated file?)")
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
        if end - begin != nbytes:
            raise ValueError(f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes, shape {shape} "
                             f"{dtype} needs {nbytes}")
        tensors[name] = (dtype, tuple(shape), begin, end)
    spans = sorted((b, e, name) for name, (_, _, b, e) in tensors.items() if e > b)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {n0!r} [{b0}, {e0}] and {n1!r} [{b1}, {e1}] overlap")
    return tensors, 8 + n, data_size


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file as read-only numpy views of a memory map.

    Raises ``ValueError`` naming the file and tensor for any malformed header (see the
    module docstring); the arrays are exactly the bytes the header points at.
    """
    path = str(path)
    tensors, start, data_size = read_header(path)
    if data_size == 0:
        data = np.zeros(0, np.uint8)
    else:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(data_size,))
    return {name: np.frombuffer(data[b:e], dtype=_DTYPES[dtype]).reshape(shape)
            for name, (dtype, shape, b, e) in tensors.items()}


def read_checkpoint(hf_dir: str) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face model directory.

    Reads ``model.safetensors``, or the shards listed in ``model.safetensors.index.json``.
    ``.bin`` (pickle) checkpoints are refused.
    """
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    single = os.path.join(hf_dir, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError("weight_map is not an object of file names")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        out, origin = {}, {}
        for shard in sorted(set(weight_map.values())):
            if os.path.isabs(shard) or os.path.normpath(shard).startswith(".."):
                raise ValueError(f"{index}: shard {shard!r} is outside {hf_dir}")
            shard_path = os.path.join(hf_dir, shard)
            if not os.path.isfile(shard_path):
                raise ValueError(f"{index}: lists shard {shard!r}, which does not exist")
            tensors = read_safetensors(shard_path)
            twice = sorted(set(tensors) & set(out))
            if twice:
                raise ValueError(f"{shard_path}: tensor {twice[0]!r} is also in {origin[twice[0]]}")
            out.update(tensors)
            origin.update({k: shard for k in tensors})
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
