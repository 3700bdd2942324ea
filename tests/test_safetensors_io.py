"""The safetensors reader trusts nothing: every malformed header is a ValueError naming the file (and
tensor), nothing is allocated beyond the file's size, and random damage to a valid file always ends in
a clean ValueError or a load equal to the reference implementation's (the ``safetensors`` package)."""
import json
import struct
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from td_jax.convert.safetensors_io import read_checkpoint, read_safetensors

DATA = np.arange(6, dtype=np.float32).tobytes()
GOOD = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}


def _write(path, header, data=DATA, length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return str(path)


@pytest.mark.parametrize("header,length,message", [
    (GOOD, 2**31, r"header length 2147483648 exceeds the \d+ bytes after the length field"),
    (GOOD, 2**40, r"header length 1099511627776 exceeds"),
    (GOOD, 2**64 - 1, r"header length 18446744073709551615 exceeds"),
    (b"[1, 2]", None, r"header is a JSON list, not an object"),
    (b"\xff\xfe{", None, r"header is not valid JSON"),
    (b'{"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, "a": {}}', None, r"duplicate key 'a'"),
    ({"__metadata__": [1]}, None, r"__metadata__ is a JSON list"),
    ({"a": 3}, None, r"tensor 'a': entry is a JSON int"),
    ({"a": {"dtype": "F32", "shape": [2, 3]}}, None, r"tensor 'a': no data_offsets"),
    ({"a": {"dtype": "F99", "shape": [2, 3], "data_offsets": [0, 24]}}, None, r"tensor 'a': unsupported dtype 'F99'"),
    ({"a": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}}, None, r"tensor 'a': shape \[2, -3\]"),
    ({"a": {"dtype": "F32", "shape": [1, 5], "data_offsets": [-4, 16]}}, None,
     r"tensor 'a': data_offsets \[-4, 16\] are not \[begin, end\]"),
    ({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 48]}}, None,
     r"tensor 'a': data_offsets \[0, 48\] run past the 24 data bytes"),
    ({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 24]}}, None,
     r"tensor 'a': data_offsets \[0, 24\] hold 24 bytes, shape \[2, 2\] F32 needs 16"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, None,
     r"tensors 'a' \[0, 16\] and 'b' \[8, 24\] overlap"),
])
def test_hostile_headers_are_named_value_errors(tmp_path, header, length, message):
    path = _write(tmp_path / "bad.safetensors", header, length=length)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"^{path}: .*{message}"):
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20                     # never sized by what the header claims


def test_valid_files_load_exactly(tmp_path):
    rs = np.random.default_rng(0)
    tensors = {"w": rs.standard_normal((3, 5)).astype(ml_dtypes.bfloat16), "i": np.arange(7, dtype=np.int64),
               "e": np.zeros((0, 4), np.float16), "f8": rs.standard_normal(9).astype(ml_dtypes.float8_e4m3fn),
               "m": np.array([True, False])}
    save_file(tensors, str(tmp_path / "ok.safetensors"), metadata={"format": "np"})
    out = read_safetensors(str(tmp_path / "ok.safetensors"))
    assert sorted(out) == sorted(tensors)
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k].view(np.uint8), v.view(np.uint8))
    empty = _write(tmp_path / "empty.safetensors", {"__metadata__": {}}, data=b"")
    assert read_safetensors(empty) == {}


def test_sharded_index_errors_name_the_index(tmp_path):
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "s1.safetensors"))
    save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "s2.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
    with pytest.raises(ValueError, match=r"s2.safetensors: tensor 'a' is also in s1.safetensors"):
        read_checkpoint(str(tmp_path))
    index.write_text(json.dumps({"weight_map": {"a": "../s1.safetensors"}}))
    with pytest.raises(ValueError, match=r"shard '../s1.safetensors' is outside"):
        read_checkpoint(str(tmp_path))
    index.write_text(json.dumps({"weight_map": {"a": "s3.safetensors"}}))
    with pytest.raises(ValueError, match=r"index.json: lists shard 's3.safetensors', which does not exist"):
        read_checkpoint(str(tmp_path))
    index.write_text('{"weight_map": ')
    with pytest.raises(ValueError, match=r"index.json: not a safetensors index"):
        read_checkpoint(str(tmp_path))


def _reference(path):
    try:
        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, ValueError, TypeError, OverflowError):
        return None


def test_fuzz_flips_and_truncations(tmp_path):
    """400 damaged copies of a valid file: ours raises ValueError naming the file, or loads exactly
    what the reference reader loads; whatever the reference loads, ours loads too."""
    rs = np.random.default_rng(0)
    src = str(tmp_path / "src.safetensors")
    save_file({"w": rs.standard_normal((4, 6)).astype(np.float32), "b": np.arange(5, dtype=np.int16),
               "h": rs.standard_normal(3).astype(ml_dtypes.bfloat16)}, src)
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    path = str(tmp_path / "fuzz.safetensors")
    outcomes = {"error": 0, "load": 0, "load_ref_rejects": 0}
    for i in range(400):
        b = bytearray(raw)
        kind = i % 4
        if kind == 0:                                       # flips anywhere in the header
            for _ in range(rs.integers(1, 4)):
                b[rs.integers(0, 8 + n)] ^= 1 << int(rs.integers(0, 8))
        elif kind == 1:                                     # a printable character replaced in the JSON
            b[8 + rs.integers(0, n)] = int(rs.choice(list(b'0123456789[],:"-{} ')))
        elif kind == 2:                                     # truncation anywhere
            b = b[: rs.integers(0, len(raw))]
        else:                                               # flips in the length field or the data
            pos = rs.integers(0, 8) if i % 8 == 3 else rs.integers(8 + n, len(raw))
            b[pos] ^= 1 << int(rs.integers(0, 8))
        with open(path, "wb") as f:
            f.write(bytes(b))
        ref = _reference(path)
        try:
            ours = read_safetensors(path)
        except ValueError as e:
            assert str(e).startswith(path + ":"), e
            assert ref is None, f"case {i}: the reference loads what we reject ({e})"
            outcomes["error"] += 1
            continue
        outcomes["load"] += 1
        outcomes["load_ref_rejects"] += ref is None
        if ref is not None:
            assert sorted(ours) == sorted(ref), i
            for k in ours:
                assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape, (i, k)
                np.testing.assert_array_equal(ours[k].view(np.uint8), ref[k].view(np.uint8))
    assert outcomes["error"] > 100 and outcomes["load"] > 50, outcomes
