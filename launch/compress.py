r"""Compress one video into a token base + token dynamics map.

    python -m launch.compress --video=PATH --k=32 --out=DIR [--frames=16] [--adaptive=elbow]

Decodes any container PyAV reads (mp4/avi/webm/...), samples ``--frames`` frames
uniformly, embeds patches (a fixed deterministic patch embedding: ``--patch`` px patches
projected to ``--dim`` features; or a real SigLIP tower from ``--vision_hf_dir``), runs Token Dynamics (fixed ``--k`` or adaptive up to
``--k``), and writes

  DIR/tokens.npz    base [K, D], dynamics_map [T, h, w] int32, counts [K], valid [K], frame_indices
  DIR/dynamics.png  the sampled frames with the map overlaid, one column per frame

and prints the token counts and the percentage of the original. ``--make_sample`` first
renders a short synthetic moving-shapes clip to ``--video`` (no download needed).
"""
from __future__ import annotations

import json
import os
import time

from absl import flags

from launch import cli
from launch.cli import flag_error

FLAGS = flags.FLAGS
flags.DEFINE_string("video", None, "Input video file (mp4/avi/webm/...).", required=True)
flags.DEFINE_string("out", None, "Output directory.", required=True)
flags.DEFINE_integer("k", 32, "Number of base tokens (k_max when --adaptive is set).")
flags.DEFINE_integer("frames", 16, "Frames sampled uniformly from the video.")
flags.DEFINE_integer("resolution", 224, "Frames are resized to resolution x resolution px.")
flags.DEFINE_integer("patch", 16, "Patch size in px of the fixed patch embedding.")
flags.DEFINE_integer("dim", 256, "Feature width of the fixed patch embedding.")
flags.DEFINE_string("vision_hf_dir", None, "A Hugging Face SiglipVisionModel directory (safetensors): embed "
                    "frames with this vision tower instead of the fixed patch embedding (--resolution and "
                    "--patch then come from its config).")
flags.DEFINE_integer("select_layer", -2, "Hidden state of --vision_hf_dir's tower to use (LLaVA reads -2).")
flags.DEFINE_enum("adaptive", "", ["", "elbow", "silhouette", "threshold"], "Adaptive K method ('' = fixed K).")
flags.DEFINE_integer("k_min", 2, "Smallest K tried by --adaptive.")
flags.DEFINE_float("threshold", 0.15, "Within-cluster cosine distance bound for --adaptive=threshold.")
flags.DEFINE_enum("base", "raw", ["raw", "normalized"], "Base = mean of raw or of L2-normalised tokens.")
flags.DEFINE_integer("seed", 0, "PRNG seed (same seed, same output).")
flags.DEFINE_bool("make_sample", False, "Render a synthetic moving-shapes clip to --video first.")
flags.DEFINE_integer("sample_seed", 0, "Seed of the synthetic clip for --make_sample.")


def make_sample_video(path: str, *, num_frames: int = 32, resolution: int = 128, seed: int = 0) -> str:
    """Render a moving-shapes clip (the benchmark's renderer) and encode it with PyAV."""
    from td_jax.data.moving_shapes import SceneConfig, make_example
    from td_jax.data.video import encode_video

    ex = make_example(SceneConfig(num_frames=num_frames, resolution=resolution), seed, "test", 1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    encode_video(path, ex["frames"], fps=8)
    return ex["question"]


def overlay_png(path: str, frames, dmap, valid, frame_indices) -> None:
    """Frames (top row) and the same frames tinted by cluster id (bottom row)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = frames.shape[0]
    k = valid.shape[0]
    rng = np.random.default_rng(0)
    palette = rng.uniform(0.1, 1.0, size=(k, 3))
    fig, axes = plt.subplots(2, t, figsize=(1.6 * t, 3.6), squeeze=False)
    r = frames.shape[1]
    for i in range(t):
        colours = palette[np.clip(dmap[i], 0, k - 1)]                        # [h, w, 3]
        big = np.kron(colours, np.ones((r // dmap.shape[1], r // dmap.shape[2], 1)))
        big = np.pad(big, ((0, r - big.shape[0]), (0, r - big.shape[1]), (0, 0)), mode="edge")
        axes[0, i].imshow(frames[i])
        axes[1, i].imshow(0.45 * frames[i] / 255.0 + 0.55 * big)
        axes[0, i].set_title(f"frame {int(frame_indices[i])}", fontsize=7)
        for a in axes[:, i]:
            a.axis("off")
    fig.suptitle(f"Token dynamics map: {int(valid.sum())} clusters over {t} frames", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_flags() -> None:
    """Raises ``ValueError`` naming the first flag whose value cannot work (before any decoding)."""
    for name in ("k", "frames", "resolution", "patch", "dim", "k_min"):
        if getattr(FLAGS, name) < 1:
            raise flag_error(name, getattr(FLAGS, name), "must be >= 1")
    if FLAGS.adaptive == "threshold" and not 0.0 < FLAGS.threshold <= 2.0:
        raise flag_error("threshold", FLAGS.threshold, "must be a cosine distance in (0, 2]")
    if FLAGS.adaptive and FLAGS.k_min > FLAGS.k:
        raise flag_error("k_min", FLAGS.k_min, f"must be <= --k={FLAGS.k} (adaptive K tries k_min..k)")
    if not FLAGS.vision_hf_dir and FLAGS.resolution % FLAGS.patch:
        raise flag_error("resolution", FLAGS.resolution, f"is not a multiple of --patch={FLAGS.patch}")
    if os.path.exists(FLAGS.out) and not os.path.isdir(FLAGS.out):
        raise flag_error("out", FLAGS.out, "exists and is not a directory")
    if not FLAGS.make_sample and os.path.isdir(FLAGS.video):
        raise flag_error("video", FLAGS.video, "is a directory; give a video file")
    if FLAGS.vision_hf_dir and not os.path.isdir(FLAGS.vision_hf_dir):
        raise flag_error("vision_hf_dir", FLAGS.vision_hf_dir, "no such directory")


def _embedder():
    """The frame embedding chosen by flags: ``frames [T, R, R, 3] uint8 -> tokens [T, h, w, D]``."""
    import jax
    import jax.numpy as jnp

    from td_jax.data.patch_embed import patch_embed
    from td_jax.data.video import normalize_frames

    if not FLAGS.vision_hf_dir:
        return (lambda f: patch_embed(f[None], patch_size=FLAGS.patch, dim=FLAGS.dim, seed=FLAGS.seed)[0]), \
            FLAGS.resolution
    from td_jax.convert import load_hf
    from td_jax.models.vit import VisionTower
    try:
        module, params = load_hf(FLAGS.vision_hf_dir)
    except (ValueError, OSError) as e:
        raise flag_error("vision_hf_dir", FLAGS.vision_hf_dir, str(e)) from e
    if not isinstance(module, VisionTower):
        raise flag_error("vision_hf_dir", FLAGS.vision_hf_dir, "is not a SiglipVisionModel directory")
    cfg = module.cfg
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x, select_layer=FLAGS.select_layer))

    def embed(frames):
        x = jnp.asarray(normalize_frames(frames))                    # SigLIP: mean = std = 0.5
        out = apply(params, x)                                       # [T, N, D]
        return out.reshape(frames.shape[0], cfg.grid, cfg.grid, out.shape[-1])

    return embed, cfg.image_size


def main(argv):
    del argv
    check_flags()                 # before the heavy imports: a bad flag fails at once
    import jax
    import numpy as np

    import td_jax
    from td_jax.data.video import decode_video_with_indices

    if FLAGS.make_sample:
        q = make_sample_video(FLAGS.video, seed=FLAGS.sample_seed)
        print(f"wrote sample video {FLAGS.video} (its benchmark question: {q})")
    embed, resolution = _embedder()
    t0 = time.time()
    # A missing, undecodable or truncated file raises VideoDecodeError (a ValueError naming it).
    frames, idx = decode_video_with_indices(FLAGS.video, FLAGS.frames, resolution)
    t_decode = time.time() - t0
    tokens = embed(frames)
    t, h, w, d = tokens.shape
    n = t * h * w
    if FLAGS.k > n:
        raise flag_error("k", FLAGS.k, f"is larger than the {n} tokens of {t} frames x {h}x{w} patches")
    key = jax.random.key(FLAGS.seed)
    t1 = time.time()
    if FLAGS.adaptive:
        fn = jax.jit(lambda x, key: td_jax.adaptive_token_dynamics(
            x, FLAGS.k, key=key, method=FLAGS.adaptive, k_min=FLAGS.k_min, threshold=FLAGS.threshold,
            base=FLAGS.base))
    else:
        fn = jax.jit(lambda x, key: td_jax.token_dynamics(x, FLAGS.k, key=key, base=FLAGS.base))
    td = jax.block_until_ready(fn(tokens, key))
    t_td = time.time() - t1
    err = float(td_jax.reconstruction_error(tokens, td))

    os.makedirs(FLAGS.out, exist_ok=True)
    # idx: the indices (among the frames actually decoded) of the sampled frames.
    np.savez_compressed(os.path.join(FLAGS.out, "tokens.npz"), base=np.asarray(td.base),
                        dynamics_map=np.asarray(td.dynamics_map), counts=np.asarray(td.counts),
                        valid=np.asarray(td.valid), frame_indices=np.asarray(idx))
    overlay_png(os.path.join(FLAGS.out, "dynamics.png"), frames, np.asarray(td.dynamics_map),
                np.asarray(td.valid), idx)
    k_used = int(td.valid.sum())
    summary = {"video": FLAGS.video, "frames": t, "grid": [h, w], "dim": d, "original_tokens": n,
               "base_tokens": k_used, "percent_of_original": 100.0 * k_used / n,
               "reconstruction_error_cosine": err, "decode_s": t_decode, "token_dynamics_s": t_td,
               "adaptive": FLAGS.adaptive or None}
    with open(os.path.join(FLAGS.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{FLAGS.video}: {t} frames x {h}x{w} patches = {n} tokens -> {k_used} base tokens "
          f"({100.0 * k_used / n:.3f}% of the original) + a {t}x{h}x{w} dynamics map")
    print(f"reconstruction error (1 - cos): {err:.4f}; decode {t_decode:.2f} s, token dynamics {t_td:.2f} s "
          f"(incl. compile)")
    print(f"wrote {os.path.join(FLAGS.out, 'tokens.npz')} and {os.path.join(FLAGS.out, 'dynamics.png')}")


if __name__ == "__main__":
    cli.run(main)
