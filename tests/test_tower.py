"""The pretrained stand-in tower (td_jax/data/tower.py): it learns to name shapes linearly, it is
applied exactly by patch_embed, and bad weights or mismatched settings fail loudly."""
import os

import numpy as np
import pytest

from td_jax.data import tower
from td_jax.data.patch_embed import patch_embed, position_embedding, windows

SMALL = dict(patch=4, context=1, dim=32, hidden=128, frames=8, resolution=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tower") / "tower.npz")
    meta = tower.train_tower(path, videos=60, test_videos=12, steps=1500, log=lambda *_: None, **SMALL)
    return path, meta


def test_tower_names_the_shape_linearly_on_held_out_videos(trained):
    path, meta = trained
    acc = meta["held_out_linear_accuracy"]
    # 4 shapes on object tokens (chance ~25-30%): a random projection stays at the majority rate
    # (results/tower_probe.md); the pretrained tower's linear head reads it
    assert acc["shape"] > 0.6 and acc["colour"] > 0.9, acc
    assert meta["held_out_windows"] > 100
    arrays = tower.load(path)
    assert arrays["w1"].shape == ((2 * 1 + 1) ** 2 * 4 * 4 * 3, 128) and arrays["w2"].shape == (128, 32)


def test_patch_embed_applies_the_frozen_tower_then_the_position_embedding(trained):
    path, _ = trained
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    out = np.asarray(patch_embed(frames, patch_size=4, dim=32, context=1, tower=path))
    x = frames.astype(np.float32) / 127.5 - 1.0
    x = x.reshape(2, 8, 8, 4, 8, 4, 3).transpose(0, 1, 2, 4, 3, 5, 6).reshape(2, 8, 8, 8, 48)
    p = tower.load(path)
    want = np.maximum(np.asarray(windows(x, 1)) @ p["w1"] + p["b1"], 0) @ p["w2"] + p["b2"]
    want = want + position_embedding(8, 8, 8, 32)
    np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-4)
    with pytest.raises(ValueError, match="need 48 -> 32"):
        patch_embed(frames, patch_size=4, dim=32, context=0, tower=path)


def test_bad_tower_files_and_settings_fail_loudly(trained, tmp_path):
    path, meta = trained
    with pytest.raises(FileNotFoundError, match="train_tower"):
        tower.load(str(tmp_path / "absent.npz"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        tower.load(str(junk))
    p = tower.load(path)
    np.savez(tmp_path / "short.npz", w1=p["w1"], b1=p["b1"], w2=p["w2"])
    with pytest.raises(ValueError, match=r"lack arrays \['b2'\]"):
        tower.load(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "nan.npz", w1=p["w1"], b1=p["b1"], w2=p["w2"] * np.nan, b2=p["b2"])
    with pytest.raises(ValueError, match="non-finite"):
        tower.load(str(tmp_path / "nan.npz"))
    # an existing tower is reused only for the settings it was trained with
    assert tower.ensure_tower(path, log=lambda *_: None, **SMALL) == meta
    with pytest.raises(ValueError, match="other settings"):
        tower.ensure_tower(path, log=lambda *_: None, **{**SMALL, "dim": 16})
    # the digest follows the arrays, not the file name
    os.link(path, tmp_path / "same.npz")
    assert tower.digest(str(tmp_path / "same.npz")) == tower.digest(path)
