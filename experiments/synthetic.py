r"""Framework self-check: an MLP on the synthetic multiple-choice task (no video model).

Trains in a few seconds on a CPU; exercises the mesh, optimizer groups, Orbax, Grain state.

    python -m launch.train --config=experiments/synthetic.py --workdir=/tmp/synthetic
    python -m launch.train --config=experiments/synthetic.py:fsdp --num_cpu_devices=8 --workdir=/tmp/synthetic_fsdp
    python -m launch.sweep --config=experiments/synthetic.py --workdir=/tmp/synthetic_sweep

``arg``: "" (data parallel over all devices) or "fsdp" (mesh data=2, fsdp=2, tensor=2).
"""
import ml_collections as mlc


def get_config(arg: str = "") -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0
    c.total_steps = 40
    c.log_every_steps = 5
    c.checkpoint_every_steps = 20
    c.eval_every_steps = 20
    c.batch_size = 16
    c.eval_batch_size = 32
    c.compute_dtype = "float32"
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    if arg == "fsdp":
        c.mesh = mlc.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
    elif arg:
        raise ValueError(f"experiments/synthetic.py: unknown arg {arg!r}; use '' or 'fsdp'")
    c.optim = mlc.ConfigDict()
    c.optim.lr = 3e-3
    c.optim.warmup_frac = 0.1
    c.optim.weight_decay = 1e-4
    c.optim.clip_norm = 1.0
    c.optim.grad_accum = 1
    c.optim.groups = mlc.ConfigDict({"head": {"pattern": r"^head/", "lr": 1e-2}})
    c.checkpoint = mlc.ConfigDict({"keep": 2, "keep_best": 1, "best_metric": "eval/accuracy"})
    c.task = mlc.ConfigDict({"name": "synthetic_mc", "hidden": 32, "depth": 2})
    return c


def get_sweep(arg: str = ""):
    """Grid over the peak LR (override dicts keyed by dotted config names)."""
    del arg
    return [{"optim.lr": lr} for lr in (1e-3, 3e-3)]
