r"""Smoke experiments: a few steps of a tiny model, well under a minute on a CPU (tests, CI).

    # tiny VideoLLM + token dynamics on the tiny moving_shapes_qa data
    python -m launch.train --config=experiments/smoke.py --workdir=/tmp/smoke
    # the same on 8 simulated devices with data + fsdp + tensor parallelism
    python -m launch.train --config=experiments/smoke.py:fsdp --num_cpu_devices=8 --workdir=/tmp/smoke_fsdp
    # framework self-check without a video model (MLP on synthetic multiple choice)
    python -m launch.train --config=experiments/smoke.py:synthetic --workdir=/tmp/smoke_synthetic
    python -m launch.sweep --config=experiments/smoke.py:synthetic --workdir=/tmp/smoke_sweep

``arg`` is a comma-separated list of: ``synthetic`` (MLP task instead of the video LLM),
``fsdp`` (mesh data=2, fsdp=2, tensor=2 instead of data parallel over all devices).
"""
import ml_collections as mlc

_ARGS = ("synthetic", "fsdp")


def _parse(arg: str) -> set:
    opts = {a for a in arg.split(",") if a}
    bad = sorted(opts - set(_ARGS))
    if bad:
        raise ValueError(f"experiments/smoke.py: unknown arg(s) {bad}; known: {list(_ARGS)}")
    return opts


def get_config(arg: str = "") -> mlc.ConfigDict:
    from td_jax.train.trainer import default_config

    opts = _parse(arg)
    c = default_config("synthetic_mc" if "synthetic" in opts else "video_qa")
    c.seed = 0
    c.compute_dtype = "float32"      # bf16 matmuls are slow on CPU; TPU configs use bfloat16
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    if "fsdp" in opts:
        c.mesh = mlc.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
    c.optim.warmup_frac = 0.1
    c.optim.clip_norm = 1.0
    c.optim.grad_accum = 1
    if "synthetic" in opts:
        c.total_steps = 40
        c.log_every_steps = 5
        c.checkpoint_every_steps = 20
        c.eval_every_steps = 20
        c.batch_size = 16
        c.eval_batch_size = 32
        c.optim.lr = 3e-3
        c.optim.weight_decay = 1e-4
        c.optim.groups = mlc.ConfigDict({"head": {"pattern": r"^head/", "lr": 1e-2}})
        c.checkpoint = mlc.ConfigDict({"keep": 2, "keep_best": 1, "best_metric": "eval/accuracy"})
        c.task.hidden, c.task.depth = 32, 2
        return c
    c.total_steps = 30
    c.log_every_steps = 5
    c.checkpoint_every_steps = 15
    c.eval_every_steps = 30
    c.eval_steps = 0
    c.batch_size = 8
    c.eval_batch_size = 8
    c.optim.lr = 3e-3
    c.optim.weight_decay = 0.0
    # The official recipe's structure (projector/LLM, cross-attention, vision), scaled for a
    # from-scratch tiny model.
    c.optim.groups = mlc.ConfigDict({
        "vision": {"pattern": r"^vision/", "lr": 1e-3},
        "compressor": {"pattern": r"^compressor/", "lr": 1e-3},
    })
    c.checkpoint = mlc.ConfigDict({"keep": 2, "keep_best": 1, "best_metric": "eval/accuracy"})
    c.task.model = "tiny_vlm"
    c.task.compressor = "token_dynamics"
    c.task.budget = 8
    c.task.data.tfds_name = "moving_shapes_qa/tiny"
    return c


def get_sweep(arg: str = ""):
    """Grid over the peak LR (override dicts keyed by dotted config names)."""
    del arg
    return [{"optim.lr": lr} for lr in (1e-3, 3e-3)]
