"""Checkpoints that cannot lie: per-file SHA-256 manifests written at commit, verified at every restore.

Covers: the manifest describes exactly the committed files (async and synchronous saves); a
flipped byte, a truncated file, a missing file or a missing manifest is reported by path; the
newest intact step is used and damaged ones are set aside (training) or left alone (read-only);
an explicit damaged step and an all-damaged directory are clean errors; truncated metadata is a
CheckpointError, not a JSONDecodeError; an intact step that does not fit the model is not
"damage"; a directory saved before checksums existed restores unverified; a read-only
Checkpointer creates and renames nothing.
"""
import gc
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from td_jax.train import checkpoint as ckpt_lib
from td_jax.train.checkpoint import CheckpointError, Checkpointer

SHARDING = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _state(step: int) -> dict:
    return {"step": jnp.asarray(step, jnp.int32),
            "params": {"w": jnp.arange(256, dtype=jnp.float32).reshape(16, 16) * step,
                       "b": jnp.full((7,), float(step))}}


def _abstract(state=None) -> dict:
    state = state or _state(1)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=SHARDING), state)


def _save_steps(directory, steps=(1, 2, 3), **kw) -> None:
    with Checkpointer(str(directory), keep=5, **kw) as ck:
        for s in steps:
            ck.save(s, _state(s), meta={"step": s, "config": {"x": s}})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "checkpoints"
    _save_steps(d)
    return d


@pytest.fixture
def copy(saved, tmp_path):
    d = tmp_path / "checkpoints"
    shutil.copytree(saved, d)
    return d


def _largest_array_file(step_dir) -> str:
    files = [os.path.join(p, f) for p, _, fs in os.walk(os.path.join(step_dir, "state", "ocdbt.process_0", "d"))
             for f in fs]
    return max(files, key=os.path.getsize)


def test_manifest_covers_every_committed_file(saved, tmp_path):
    for s in (1, 2, 3):
        step_dir = saved / str(s)
        manifest = json.loads((step_dir / "checksums.json").read_text())
        on_disk = sorted(os.path.relpath(os.path.join(p, f), step_dir) for p, _, fs in os.walk(step_dir)
                         for f in fs)
        listed = sorted(manifest["files"])
        assert sorted(set(on_disk) - set(listed)) == ["_CHECKPOINT_METADATA", "checksums.json",
                                                      "commit_success.txt"]
        assert "meta/metadata" in listed and any(f.startswith("state/ocdbt.process_0/d/") for f in listed)
        assert ckpt_lib.verify_manifest(step_dir) == sum(v[0] for v in manifest["files"].values()) > 0
    # A synchronous save writes its manifest the same way (and has committed on return).
    _save_steps(tmp_path / "sync", steps=(5,), async_save=False)
    assert ckpt_lib.verify_manifest(tmp_path / "sync" / "5") > 0
    assert not [p for p in os.listdir(tmp_path / "sync") if "tmp" in p]


def test_flipped_bytes_are_detected_and_newest_intact_step_restored(copy):
    bad = _largest_array_file(copy / "3")
    with open(bad, "r+b") as f:
        f.seek(os.path.getsize(bad) // 2)
        f.write(b"\x00" * 16)
    with Checkpointer(str(copy)) as ck:
        with pytest.raises(CheckpointError, match=r"3/state/ocdbt.process_0/d/.*SHA-256 differs"):
            ck.restore(3, _abstract())
        step, state, meta = ck.restore_latest(_abstract())
    assert step == 2 and meta["step"] == 2
    np.testing.assert_array_equal(state["params"]["w"], np.asarray(_state(2)["params"]["w"]))
    assert (copy / "3.damaged").is_dir() and not (copy / "3").exists()   # set aside for inspection


def test_truncation_missing_file_and_missing_manifest(copy):
    meta = copy / "3" / "meta" / "metadata"
    meta.write_bytes(meta.read_bytes()[:10])
    os.remove(_largest_array_file(copy / "2"))
    os.remove(copy / "1" / "checksums.json")
    with Checkpointer(str(copy), read_only=True) as ck:
        with pytest.raises(CheckpointError, match=r"3/meta/metadata: 10 bytes, \d+ when saved"):
            ck.read_meta(3)                   # a truncated JSON: CheckpointError, never JSONDecodeError
        with pytest.raises(CheckpointError, match=r"2/state/.*file missing"):
            ck.verify(2)
        with pytest.raises(CheckpointError, match=r"1: no checksums.json"):
            ck.verify(1)
        with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*3/meta/metadata.*2/state"):
            ck.newest_intact_step()
        with pytest.raises(CheckpointError, match=r"no intact checkpoint"):
            ck.restore_latest(_abstract(), set_aside=False)
    assert sorted(os.listdir(copy)) == ["1", "2", "3"]          # read-only: nothing renamed


def test_read_only_eval_path_reports_and_skips(copy, tmp_path):
    with open(_largest_array_file(copy / "3"), "r+b") as f:
        f.write(b"garbage!")
    with Checkpointer(str(copy), read_only=True) as ck:
        assert ck.newest_intact_step() == 2
        assert list(ck.damaged) == [3] and "3/state/" in ck.damaged[3]
        with pytest.raises(CheckpointError, match="SHA-256 differs"):
            ck.newest_intact_step(3)          # an explicit step is never replaced by another
        with pytest.raises(CheckpointError, match=r"no step 7 in .* \(have \[1, 2, 3\]\)"):
            ck.newest_intact_step(7)
        assert ck.read_meta(2)["config"] == {"x": 2}
        with pytest.raises(RuntimeError, match="read-only"):
            ck.save(4, _state(4))
    assert sorted(os.listdir(copy)) == ["1", "2", "3"]
    missing = tmp_path / "nowhere" / "checkpoints"
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        Checkpointer(str(missing), read_only=True)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # Orbax's aborted reads
def test_intact_step_that_does_not_fit_is_not_damage(copy):
    wrong = _abstract({"step": jnp.int32(0), "params": {"w": jnp.zeros((8, 8)), "b": jnp.zeros((7,))}})
    with Checkpointer(str(copy)) as ck:
        with pytest.raises(Exception) as e:
            ck.restore_latest(wrong)
        assert not isinstance(e.value, CheckpointError)
        del e
    gc.collect()                              # Orbax's aborted reads are reported here, not in a later test
    assert sorted(os.listdir(copy)) == ["1", "2", "3"]          # nothing set aside


def test_directory_without_checksums_restores_unverified(copy):
    for s in (1, 2, 3):
        os.remove(copy / str(s) / "checksums.json")
    with Checkpointer(str(copy)) as ck:
        step, state, _ = ck.restore_latest(_abstract())
    assert step == 3 and float(state["params"]["b"][0]) == 3.0


def test_converted_params_are_verified_on_load(tmp_path):
    """A launch.convert output carries a checksum manifest: a flipped byte is a CheckpointError
    naming the file, never wrong weights; an output from before manifests loads with a warning."""
    from td_jax.convert.checkpoint import load_converted, save_converted
    from td_jax.models import configs as C
    from td_jax.models.vlm import VideoLLM

    params = {"a": np.arange(4096, dtype=np.float32).reshape(64, 64), "b": {"c": np.ones(7, np.float32)}}
    out = tmp_path / "conv"
    save_converted(str(out), VideoLLM(C.CONFIGS["tiny_vlm"]), params)
    assert (out / "params" / "checksums.json").is_file()
    _, back = load_converted(str(out))
    np.testing.assert_array_equal(np.asarray(back["a"]), params["a"])
    manifest = json.loads((out / "params" / "checksums.json").read_text())
    big = max(manifest["files"], key=lambda f: manifest["files"][f][0])
    data = bytearray((out / "params" / big).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "params" / big).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"SHA-256 differs"):
        load_converted(str(out))
    os.remove(out / "params" / "checksums.json")          # converted before checksums existed
    save_converted(str(out), VideoLLM(C.CONFIGS["tiny_vlm"]), params, overwrite=True)
    os.remove(out / "params" / "checksums.json")
    _, back = load_converted(str(out))
    np.testing.assert_array_equal(np.asarray(back["b"]["c"]), params["b"]["c"])
