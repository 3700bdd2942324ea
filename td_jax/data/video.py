"""Video decoding (PyAV), uniform frame sampling, resizing and normalisation.

Frames leave the data pipeline as ``[T, R, R, 3]`` uint8; the model normalises them with
:func:`normalize_frames` (the vision tower's mean/std).
"""
from __future__ import annotations

import os
from typing import Sequence

import av
import numpy as np
from PIL import Image


class VideoDecodeError(ValueError):
    """A video file could not be decoded; the message starts with the file's path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """Uniform frame indices as lmms-eval samples them: ``linspace(0, total-1, num_frames)``
    truncated to int (repeats frames when the video is shorter than ``num_frames``)."""
    if total < 1:
        raise ValueError(f"cannot sample {num_frames} frames from an empty video")
    return np.linspace(0, total - 1, num_frames, dtype=int)


def _decode_selected(path: str, wanted: np.ndarray, resolution: int) -> tuple[dict[int, np.ndarray], int]:
    """One decode pass keeping the frames in ``wanted``; returns them and the frame count."""
    keep, n = {}, 0
    want = set(int(i) for i in wanted)
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if n in want:
                keep[n] = frame.reformat(width=resolution, height=resolution, format="rgb24",
                                         interpolation="BILINEAR").to_ndarray()
            n += 1
    return keep, n


def _frame_count(path: str) -> int:
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(path, "no video stream")
        return int(container.streams.video[0].frames)


def decode_video(path: str | os.PathLike, num_frames: int, resolution: int) -> np.ndarray:
    """``num_frames`` uniformly sampled frames of ``path``, squashed to ``[T, R, R, 3]`` uint8.

    Raises :class:`VideoDecodeError` (naming the file) for a missing, truncated or
    undecodable file.  Uses the container's frame count when it has one and checks it
    against the frames actually decoded (one extra pass if it was wrong).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "no such file")
    try:
        total = _frame_count(path)
        wanted = sample_indices(total, num_frames) if total > 0 else np.zeros(0, int)
        keep, n = _decode_selected(path, wanted, resolution)  # a pure counting pass if total unknown
        if n == 0:
            raise VideoDecodeError(path, "no decodable frames")
        if n != total:  # the container's count was missing or wrong: select against the real one
            wanted = sample_indices(n, num_frames)
            keep, n2 = _decode_selected(path, wanted, resolution)
            if n2 != n:
                raise VideoDecodeError(path, f"decoded {n} then {n2} frames: unstable stream")
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
        raise VideoDecodeError(path, f"{type(e).__name__}: {e}") from e
    return np.stack([keep[int(i)] for i in wanted]).astype(np.uint8)


def encode_video(path: str | os.PathLike, frames: np.ndarray, *, fps: int = 8, codec: str = "libx264",
                 lossless: bool = True) -> None:
    """Write ``frames [T, H, W, 3]`` uint8 to a video file (H, W even for yuv420p codecs)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        if codec == "libx264" and lossless:
            stream.pix_fmt = "yuv444p"
            stream.options = {"qp": "0"}
        else:
            stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def resize_frames(frames: np.ndarray, resolution: int) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 → ``[T, R, R, 3]`` uint8 (bilinear, aspect squashed like SigLIP)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (resolution, resolution):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((resolution, resolution), Image.BILINEAR))
                     for f in frames])


def normalize_frames(frames, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
    """``[..., 3]`` uint8 → float32 ``(x / 255 - mean) / std`` (SigLIP's defaults map to [-1, 1]).

    Works on numpy and JAX arrays alike (uses the array's own operators)."""
    x = frames.astype("float32") / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
