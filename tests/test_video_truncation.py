"""Decoding that tells the truth: a cut-off video is an error (or, in skip mode, skipped and counted),
never fewer frames passed off as the whole clip; frame indices name frames actually decoded."""
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from td_jax.data import pipeline, video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frames(n=32, size=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _write(path, frames, *, fmt=None, codec="libx264", options=None, fps=8):
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _cut(path, frac, out):
    data = open(path, "rb").read()
    with open(out, "wb") as f:
        f.write(data[: int(frac * len(data))])
    return str(out)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    fast = _write(d / "fast.mp4", _frames(), options={"movflags": "faststart"})   # index first: cuts decode
    webm = _write(d / "clip.webm", _frames(30), codec="libvpx", fps=10)          # no frame count declared
    return {"fast": fast, "fast_cut": _cut(fast, 0.6, d / "fast_cut.mp4"), "webm": webm,
            "webm_cut": _cut(webm, 0.6, d / "clip_cut.webm"), "dir": str(d)}


def test_a_cut_faststart_mp4_raises_naming_the_file(clips):
    frames, idx = video.decode_video_with_indices(clips["fast"], 4, 32)
    assert frames.shape == (4, 32, 32, 3) and idx.tolist() == [0, 10, 20, 31]
    with pytest.raises(video.VideoDecodeError, match=r"fast_cut.mp4: decoded \d+ of the 32 frames the container "
                                                     r"declares \(truncated"):
        video.decode_video(clips["fast_cut"], 4, 32)


def test_a_cut_webm_is_caught_by_its_duration_and_indices_count_decoded_frames(clips):
    info = video.container_info(clips["webm"])
    assert info.frames == 0 and info.duration == pytest.approx(3.0) and info.rate == pytest.approx(10.0)
    _, idx = video.decode_video_with_indices(clips["webm"], 4, 32)
    assert idx.tolist() == [0, 9, 19, 29]                   # against the 30 frames decoded
    with pytest.raises(video.VideoDecodeError, match=r"clip_cut.webm: decoded frames cover 1\.\d+ s of the "
                                                     r"3\.00 s the container declares"):
        video.decode_video(clips["webm_cut"], 4, 32)


def test_shortfall_rule_and_bad_arguments(tmp_path, clips):
    info = video.ContainerInfo(frames=100, duration=None, rate=None, start=0.0)
    video.check_complete("x.mp4", info, 98, None)          # 2 frames short: edit lists, rounding
    with pytest.raises(video.VideoDecodeError, match="decoded 97 of the 100"):
        video.check_complete("x.mp4", info, 97, None)
    with pytest.raises(video.VideoDecodeError, match="is a directory"):
        video.decode_video(clips["dir"], 4, 32)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        video.decode_video(clips["fast"], 0, 32)


def test_skip_mode_skips_and_counts_a_cut_video(clips, tmp_path):
    with open(tmp_path / "train.jsonl", "w") as f:
        for name in ("fast", "fast_cut", "webm"):
            f.write(json.dumps({"video": clips[name], "question": "q?", "options": ["a", "b"], "answer": 0}) + "\n")
    cfg = dict(source="folder", folder_jsonl=str(tmp_path / "{split}.jsonl"), num_frames=4, resolution=32,
               batch_size=3, shuffle=False, num_epochs=1, drop_remainder=False, max_text_len=32)
    with pytest.raises(video.VideoDecodeError, match="fast_cut.mp4"):
        list(pipeline.make_pipeline(cfg, "train", process_index=0, process_count=1))
    (batch,) = pipeline.make_pipeline({**cfg, "skip_corrupt": True}, "train", process_index=0, process_count=1)
    assert batch["corrupt"].tolist() == [False, True, False] and batch["valid"].tolist() == [True, False, True]


def test_launch_compress_refuses_a_cut_video(clips, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "launch.compress", f"--video={clips['fast_cut']}", f"--out={tmp_path}",
                        "--k=4", "--frames=4", "--resolution=32", "--patch=8", "--dim=16"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback (most" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {clips['fast_cut']}: decoded ")
    assert not os.path.exists(tmp_path / "tokens.npz")
