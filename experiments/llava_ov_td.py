r"""Fine-tune LLaVA-OneVision with token dynamics in front of the LLM: the paper's recipe.

Start from a released LLaVA-OV checkpoint (a Hugging Face directory), compress every video to
K = 32 base tokens (or an adaptive K <= 32) whose motion the cross-dynamics attention puts back,
and fine-tune on a video-instruction folder. The official recipe: projector and LLM at 1e-5,
the cross-attention at 1e-6, the vision tower at 2e-6, cosine schedule with 3% warm-up, bf16,
per-device batch 1 with 2 accumulated micro-batches, 32 frames, one epoch of
LLaVA-Video-178K.

    # 0. the checkpoint (on a machine with internet)
    huggingface-cli download llava-hf/llava-onevision-qwen2-0.5b-ov-hf --local-dir ~/hf/llava-ov-0.5b
    # 1. fine-tune (DATA/train.json: LLaVA-Video-178K rows {video, conversations}; DATA/validation.json:
    #    any layout of td_jax.data.video_folder, multiple-choice rows are scored)
    python -m launch.train --workdir=/runs/llava_ov_td \
        --config=experiments/llava_ov_td.py:hf_dir=~/hf/llava-ov-0.5b,data=DATA/{split}.json,video_root=DATA/videos,steps=20000
    #    adaptive K (elbow) instead of fixed K = 32:
    python -m launch.train --workdir=/runs/llava_ov_td_elbow \
        --config=experiments/llava_ov_td.py:hf_dir=~/hf/llava-ov-0.5b,data=DATA/{split}.json,adaptive=elbow
    # 2. evaluate the run (architecture and weights from its checkpoint) on a benchmark
    python -m launch.eval --workdir=/runs/llava_ov_td --split=test \
        --config=experiments/eval_video_qa.py:data=/data/nextqa/{split}.parquet,layout=nextqa
    # ahead-of-time check at the real 0.5B size on a simulated v5e-16 (no weights, no data):
    python -m launch.train --config=experiments/llava_ov_td.py:batch=16 --compile_only --num_cpu_devices=16 \
        --config.mesh.data=4 --config.mesh.fsdp=4
    # a TPU pod (see launch/tpu.py; every host needs the checkpoint and the videos locally or on a mount)
    python -m launch.tpu --tpu=td-v5e --zone=us-west4-a --accelerator_type=v5litepod-16 \
        --config=experiments/llava_ov_td.py:hf_dir=/mnt/hf/llava-ov-0.5b,data=/mnt/data/{split}.json,batch=32 \
        --workdir=gs://BUCKET/runs/llava_ov_td

``arg`` is a comma-separated list of ``key=value`` (and flags):

    hf_dir=PATH    LLaVA-OV Hugging Face directory (weights, tokenizer.json, architecture). Without
                   it the model is LLaVA-OV-0.5B's shape with random weights (for --compile_only).
    data=PATH      question lists, ``{split}`` replaced by train / validation (any video_folder layout;
                   LLaVA-Video-178K's is ``instruct``); video_root=PATH anchors the video paths.
    layout=NAME    force a layout (default: detected per file).
    frames=32      frames per video; res=0 (the vision tower's size, 384).
    k=32           token budget K (adaptive: k_max); adaptive=elbow|silhouette|threshold.
    batch=32       global batch (the recipe: 1 per device x 2 accumulated micro-batches, so 2 x chips);
                   accum=2; steps=5000 (one epoch = training rows / batch); lr=1e-5.
    max_len=1024   text tokens per example (longer conversations are cut).
    workers=8      video-decoding processes per host.
    fsdp=1         mesh fsdp axis (data takes the remaining devices).
    tiny           a few-step CPU run (tests): 4 frames, batch 2, 3 steps, float32, no remat.
"""
import ml_collections as mlc

_KEYS = {"hf_dir": str, "data": str, "video_root": str, "layout": str, "frames": int, "res": int, "k": int,
         "adaptive": str, "batch": int, "accum": int, "steps": int, "lr": float, "max_len": int, "workers": int,
         "fsdp": int}
_FLAGS = ("tiny",)


def parse_arg(arg: str, keys: dict, flags: tuple = ()) -> dict:
    """``"a=1,b=x,flag"`` -> ``{"a": 1, "b": "x", "flag": True}`` typed by ``keys`` (ValueError naming
    an unknown key or a bad value)."""
    out = {}
    for part in [p for p in arg.split(",") if p.strip()]:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            if key not in flags:
                raise ValueError(f"unknown config flag {key!r}; known keys: {sorted(keys)}, flags: {list(flags)}")
            out[key] = True
            continue
        if key not in keys:
            raise ValueError(f"unknown config arg {key!r}; known keys: {sorted(keys)}, flags: {list(flags)}")
        try:
            out[key] = keys[key](value)
        except ValueError:
            raise ValueError(f"config arg {key}={value!r} is not a valid {keys[key].__name__}") from None
    return out


def get_config(arg: str = "") -> mlc.ConfigDict:
    from td_jax.train.trainer import default_config

    a = parse_arg(arg, _KEYS, _FLAGS)
    tiny = a.get("tiny", False)
    c = default_config("video_qa")
    c.seed = 0
    c.compute_dtype = "float32" if tiny else "bfloat16"
    c.param_dtype = "float32"
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": a.get("fsdp", 1), "tensor": 1})
    c.total_steps = a.get("steps", 3 if tiny else 5000)
    c.batch_size = a.get("batch", 2 if tiny else 32)
    c.eval_batch_size = c.batch_size
    c.log_every_steps = 1 if tiny else 10
    c.checkpoint_every_steps = c.total_steps if tiny else 500
    c.eval_every_steps = 0            # evaluated once, at the end (validation split)
    c.eval_steps = 0
    c.checkpoint = mlc.ConfigDict({"keep": 2, "keep_best": 0, "best_metric": "eval/accuracy"})

    # The official recipe: LLM + projector 1e-5, cross-attention 1e-6, vision 2e-6; cosine, 3% warm-up.
    c.optim.name = "adamw"
    c.optim.lr = a.get("lr", 1e-5)
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_frac = 0.03
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.optim.grad_accum = a.get("accum", 1 if tiny else 2)
    c.optim.groups = mlc.ConfigDict({
        "vision": {"pattern": r"^vision/", "lr": 2e-6},
        "cross_attention": {"pattern": r"^compressor/", "lr": 1e-6},
    })

    t = c.task
    t.model = "" if "hf_dir" in a else "llava_ov_0_5b"
    t.init_from = a.get("hf_dir", "")
    t.resize_vocab = False
    t.compressor = "token_dynamics"
    t.budget = a.get("k", 4 if tiny else 32)
    ccfg = {"adaptive": a["adaptive"]} if a.get("adaptive") else {}
    if tiny:
        ccfg.update(iters=8, n_init=1)
    import json
    t.compressor_cfg = json.dumps(ccfg)
    t.remat = not tiny
    set_folder_data(t, a, frames=4 if tiny else 32, max_len=64 if tiny else 1024, workers=0 if tiny else 8,
                    tokenizer="init_from" if "hf_dir" in a else "word")
    t.data.skip_corrupt = not tiny    # a broken video in 178K rows becomes a masked row, counted
    return c


def set_folder_data(t, a: dict, *, frames: int, max_len: int, workers: int, tokenizer: str) -> None:
    """``config.task`` reading a video-QA folder from the ``data``, ``layout``, ``video_root``,
    ``frames``, ``res``, ``max_len``, ``workers`` and ``options`` args (defaults as given)."""
    t.prepare_data = False
    d = t.data
    d.source = "folder"
    d.folder_jsonl = a.get("data", "")
    d.folder_layout = a.get("layout", "auto")
    d.video_root = a.get("video_root", "")
    d.num_frames = a.get("frames", frames)
    d.resolution = a.get("res", 0)
    d.tokenizer = a.get("tokenizer", tokenizer)
    d.num_options = a.get("options", 5)
    d.max_text_len = a.get("max_len", max_len)
    d.worker_count = a.get("workers", workers)
