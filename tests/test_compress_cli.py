"""launch.compress end to end: a sample clip in, tokens.npz + dynamics.png out; bad files named."""
import json
import os
import subprocess
import sys

import numpy as np
import procs
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = procs.env(8)
    return subprocess.run([sys.executable, "-m", "launch.compress", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress")
    video = str(d / "clip.mp4")
    out = str(d / "td")
    r = _run(f"--video={video}", "--make_sample", "--k=8", f"--out={out}", "--frames=8",
             "--resolution=64", "--patch=8", "--dim=32")
    assert r.returncode == 0, r.stderr[-2000:]
    return video, out, r.stdout


def test_compress_writes_tokens_and_picture(sample):
    video, out, stdout = sample
    z = np.load(os.path.join(out, "tokens.npz"))
    assert z["base"].shape == (8, 32) and z["dynamics_map"].shape == (8, 8, 8)
    assert z["dynamics_map"].dtype == np.int32 and z["valid"].all()
    assert z["counts"].sum() == 8 * 8 * 8
    assert len(z["frame_indices"]) == 8 and np.all(np.diff(z["frame_indices"]) > 0)
    with open(os.path.join(out, "dynamics.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["original_tokens"] == 512 and summary["base_tokens"] == 8
    assert "512 tokens -> 8 base tokens (1.562% of the original)" in stdout


def test_compress_adaptive(sample, tmp_path):
    video, _, _ = sample
    r = _run(f"--video={video}", "--k=12", "--adaptive=silhouette", f"--out={tmp_path}", "--frames=8",
             "--resolution=64", "--patch=8", "--dim=32")
    assert r.returncode == 0, r.stderr[-2000:]
    z = np.load(os.path.join(tmp_path, "tokens.npz"))
    k = int(z["valid"].sum())
    assert z["base"].shape == (12, 32) and 2 <= k <= 12 and z["dynamics_map"].max() < k


def test_missing_and_corrupt_files_give_one_line_errors(sample, tmp_path):
    r = _run(f"--video={tmp_path}/nope.mp4", f"--out={tmp_path}/o")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "nope.mp4" in last and "no such file" in last
    video, _, _ = sample
    data = open(video, "rb").read()
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(data[: len(data) // 3])
    r = _run(f"--video={bad}", f"--out={tmp_path}/o2", "--frames=8", "--resolution=64", "--patch=8", "--dim=32")
    assert r.returncode != 0
    assert "truncated.mp4" in r.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "o2" / "tokens.npz")
    r = _run(f"--video={video}", f"--out={tmp_path}/o3", "--k=9999", "--frames=8", "--resolution=64",
             "--patch=8", "--dim=32")
    assert r.returncode != 0 and "larger than the 512 tokens" in r.stderr.strip().splitlines()[-1]


def test_compress_with_a_real_vision_tower(sample, tmp_path):
    """--vision_hf_dir: a tiny random SiglipVisionModel saved by transformers embeds the frames."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4)
    transformers.SiglipVisionModel(cfg).eval().save_pretrained(tmp_path / "siglip")
    video, _, _ = sample
    r = _run(f"--video={video}", f"--vision_hf_dir={tmp_path / 'siglip'}", "--k=6", f"--out={tmp_path}/o",
             "--frames=8")
    assert r.returncode == 0, r.stderr[-2000:]
    z = np.load(os.path.join(tmp_path, "o", "tokens.npz"))
    assert z["base"].shape == (6, 32) and z["dynamics_map"].shape == (8, 4, 4)
    r = _run(f"--video={video}", f"--vision_hf_dir={tmp_path}", "--k=6", f"--out={tmp_path}/o2")
    assert r.returncode != 0 and "vision_hf_dir" in r.stderr.strip().splitlines()[-1]
