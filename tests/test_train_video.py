"""End to end: the smoke config (tiny VideoLLM + token dynamics on tiny moving_shapes_qa).

Loss falls; an interrupted + resumed run is bit-identical to an uninterrupted one; a
(data=2, fsdp=2, tensor=2) checkpoint restored onto one device continues with the same losses;
evaluation reports
accuracy per question family; launch.eval writes the per-family table.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import procs
import pytest

from td_jax.train import checkpoint as ckpt_lib
from td_jax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(arg="", **over):
    spec = importlib.util.spec_from_file_location("smoke_cfg", os.path.join(ROOT, "experiments/smoke.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config(arg)
    for k, v in over.items():
        node = c
        parts = k.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = v
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import tensorflow_datasets as tfds
    import td_jax.data.moving_shapes_qa  # noqa: F401

    d = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("moving_shapes_qa/tiny", data_dir=d).download_and_prepare()
    return d


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """(The resumed runs read the uninterrupted run's programs from the run's compilation cache.)"""
    root = tmp_path_factory.mktemp("video_runs")
    common = {"total_steps": 6, "log_every_steps": 1, "checkpoint_every_steps": 3, "eval_every_steps": 6,
              "task.data.data_dir": data_dir, "task.compressor_cfg": '{"iters": 8, "n_init": 1}'}
    cfg = trainer.resolve_config(smoke_config("fsdp", **common))
    full = trainer.train_and_evaluate(cfg, str(root / "full"))
    part1 = trainer.train_and_evaluate(cfg, str(root / "resumed"), stop_at=3)
    # One device continues the 2x2x2 run's step-3 checkpoint (restored onto the new mesh).
    shutil.copytree(root / "resumed", root / "one")
    part2 = trainer.train_and_evaluate(cfg, str(root / "resumed"))
    cfg1 = trainer.resolve_config(smoke_config("", **common))
    one = trainer.train_and_evaluate(cfg1, str(root / "one"), devices=jax.devices()[:1])
    return {"root": root, "cfg": cfg, "full": full, "part1": part1, "part2": part2, "one": one,
            "data_dir": data_dir}


def losses(history):
    return {r["step"]: r["loss"] for r in history if "loss" in r}


def test_smoke_loss_falls_and_eval_reports_families(runs):
    ls = losses(runs["full"].history)
    assert sorted(ls) == [1, 2, 3, 4, 5, 6]
    assert ls[5] + ls[6] < 0.8 * (ls[1] + ls[2])
    ev = runs["full"].eval_metrics
    fams = ["color", "shape", "count", "direction", "speed", "motion", "order", "position"]
    assert ev["eval/count"] == 32 and all(f"eval/accuracy/{f}" in ev for f in fams)
    assert sum(ev[f"eval/count/{f}"] for f in fams) == 32
    assert np.isfinite(ev["eval/loss"])


def test_smoke_resume_is_bit_identical(runs):
    assert runs["part1"].preempted and runs["part1"].step == 3
    full = losses(runs["full"].history)
    resumed = {**losses(runs["part1"].history), **losses(runs["part2"].history)}
    assert full == resumed
    assert runs["full"].eval_metrics == runs["part2"].eval_metrics
    s = trainer.build(runs["cfg"])
    abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
    states = []
    for name in ("full", "resumed"):
        ck = ckpt_lib.Checkpointer(str(runs["root"] / name / "checkpoints"), async_save=False)
        step, state, _ = ck.restore_latest(abstract)
        ck.close()
        assert step == 6
        states.append(state)
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_smoke_mesh_2x2x2_matches_one_device(runs):
    full, one = losses(runs["full"].history), losses(runs["one"].history)
    assert sorted(one) == [4, 5, 6]
    full = {k: full[k] for k in one}
    np.testing.assert_allclose([full[k] for k in sorted(full)], [one[k] for k in sorted(one)], rtol=1e-3)
    for k in ("eval/loss", "eval/accuracy"):
        assert runs["one"].eval_metrics[k] == pytest.approx(runs["full"].eval_metrics[k], rel=1e-3)


def test_launch_eval_writes_family_table(runs, tmp_path):
    env = procs.env(8)
    r = subprocess.run([sys.executable, "-m", "launch.eval", f"--workdir={runs['root'] / 'full'}",
                        f"--output_dir={tmp_path}", "--split=test"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(tmp_path / "eval_test_6.json"))
    assert rec["metrics"]["count"] == 32 and rec["task"] == "video_qa"
    md = open(tmp_path / "eval_test_6.md").read()
    assert "| direction |" in md and "| **all** |" in md and "token_dynamics (budget 8)" in md
    preds = [json.loads(line) for line in open(tmp_path / "eval_test_6.predictions.jsonl")]
    assert len(preds) == 32 and {"id", "question", "options", "prediction", "accuracy", "scores"} <= set(preds[0])
    # the run's weights with another compressor: base_only has no cross-attention parameters
    r = subprocess.run([sys.executable, "-m", "launch.eval", f"--workdir={runs['root'] / 'full'}",
                        f"--output_dir={tmp_path / 'base_only'}", "--split=test", "--compressor=base_only",
                        "--budget=8", "--eval_steps=1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.load(open(tmp_path / "base_only" / "eval_test_6.json"))
    assert rec["model"]["compressor"] == "base_only" and rec["examples"]["scored"] == 8


def test_eval_predicts_only_each_examples_own_options(runs):
    """A question with fewer options than the tokenizer's letters (``num_options``) is scored over
    its own options only, in the trainer's metrics and in its per-example rows (which
    ``launch.eval`` reads): a padded option slot never wins."""
    from td_jax.train import data as data_lib

    s = trainer.build(runs["cfg"])
    abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_shardings)
    ck = ckpt_lib.Checkpointer(str(runs["root"] / "full" / "checkpoints"), read_only=True)
    _, state, _ = ck.restore_latest(abstract)
    ck.close()
    batch = next(iter(s.task.make_data("test", batch_size=s.config.eval_batch_size, train=False, seed=0,
                                       shard_index=0, shard_count=1)))
    step = trainer.make_eval_step(s)
    run = lambda b: jax.device_get(step(state["params"], data_lib.to_global(b, s.eval_batch_shardings)))  # noqa: E731
    out = run(batch)
    valid = np.asarray(batch["valid"])
    best = np.argmax(out["per_example/scores"], axis=1)
    assert np.array_equal(out["per_example/prediction"][valid], best[valid])      # 4 of 4 options: unrestricted
    assert (best[valid] > 0).any()        # the check below can tell: some rows' best letter is not A
    # give every question only the options before its best letter (at least one): that letter is out
    cut = dict(batch, num_options=np.where(valid, np.maximum(best, 1), 0).astype(np.int32),
               answer=np.zeros_like(batch["answer"]))
    got = run(cut)
    pred = got["per_example/prediction"][valid]
    own = cut["num_options"][valid]
    assert (pred < own).all()
    want = np.array([np.argmax(sc[:k]) for sc, k in zip(got["per_example/scores"][valid], own)])
    assert np.array_equal(pred, want)
    assert got["correct"].sum() == (pred == 0).sum() and got["count"].sum() == valid.sum()
