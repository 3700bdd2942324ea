"""launch/motion_qa.py end to end on the tiny benchmark, and the report's checks."""
import json
import math
import os

import numpy as np
import pytest

from experiments import motion_qa as exp
from td_jax.eval import report

REQUIRED = ("method", "visual_tokens", "percent_tokens", "accuracy", "accuracy_by_family", "seeds", "tokdense",
            "train_time_s", "eval_time_s", "steps")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from launch import motion_qa

    root = tmp_path_factory.mktemp("motion_qa")
    cfg = exp.get_config("tiny")
    cfg.workdir = str(root / "work")
    out = str(root / "results")
    arms = motion_qa.run(cfg, out)
    return cfg, arms, out


def test_driver_writes_well_formed_results(tiny_run):
    cfg, arms, out = tiny_run
    with open(os.path.join(out, "motion_qa.json")) as f:
        saved = json.load(f)
    assert [a["name"] for a in saved] == ["token_dynamics", "base_only"]
    with open(os.path.join(out, "motion_qa_meta.json")) as f:
        meta = json.load(f)
    n_tokens = 8 * 4 * 4                      # tiny: 8 frames of 32 px, 8-px patches
    assert meta["n_tokens"] == n_tokens and meta["eval_examples"] == 32
    for a in saved:
        for k in REQUIRED:
            assert k in a, (a["name"], k)
        assert a["seeds"] == [0, 1]
        assert a["steps"] == cfg.train.steps
        assert 0.0 <= a["accuracy"] <= 1.0
        assert set(a["accuracy_by_family"]) == set(meta["families"])
        # K = 4 clusters of 128 tokens (an empty cluster would lower it; never raise it)
        assert 1 <= a["visual_tokens"] <= 4
        assert math.isclose(a["percent_tokens"], 100 * a["visual_tokens"] / n_tokens)
        assert math.isclose(a["tokdense"], 100 * a["accuracy"] / a["visual_tokens"])
        # the overall accuracy is the per-seed mean of the exact per-example hits
        assert math.isclose(a["accuracy"], np.mean([s["accuracy"] for s in a["per_seed"]]))
        for s in a["per_seed"]:
            assert s["accuracy"] * 32 == pytest.approx(round(s["accuracy"] * 32))
    md = open(os.path.join(out, "motion_qa.md")).read()
    assert "| token_dynamics | `token_dynamics` |" in md and "## Targets" in md
    for png in ("accuracy_vs_tokens.png", "example_dynamics.png", "adaptive_k.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_training_moves_the_loss(tiny_run):
    _, arms, _ = tiny_run
    for a in arms:
        for s in a["per_seed"]:
            assert np.isfinite(s["loss_first"]) and np.isfinite(s["loss_last"])
            assert s["loss_last"] < s["loss_first"], (a["name"], s)


def test_unknown_arm_is_rejected_by_name():
    cfg = exp.get_config("")
    cfg.arms = "token_dynamics,tome_typo"
    with pytest.raises(ValueError, match="tome_typo"):
        exp.get_arms(cfg)


def test_adaptive_arm_needs_its_fixed_k_arm():
    cfg = exp.get_config("")
    cfg.arms = "adaptive (elbow)"
    with pytest.raises(ValueError, match="token_dynamics"):
        exp.get_arms(cfg)


def test_full_grid_uses_more_seeds_and_steps():
    from launch import motion_qa

    cfg = exp.get_config("")
    base = motion_qa.effective(cfg)
    cfg.full = True
    full = motion_qa.effective(cfg)
    assert full["train"]["steps"] > base["train"]["steps"]
    heads = {a["name"]: a["seeds"] for a in exp.get_arms(cfg)}
    assert len(heads["token_dynamics"]) >= 3 and len(heads["prune"]) >= 2


def test_bad_budget_and_patch_are_errors(tmp_path):
    from launch import motion_qa

    cfg = exp.get_config("")
    cfg.budget = 0
    with pytest.raises(ValueError, match="config.budget"):
        motion_qa.effective(cfg)
    c = motion_qa.effective(exp.get_config(""))
    c["tokens"]["patch_size"] = 5
    with pytest.raises(ValueError, match="patch_size"):
        motion_qa.token_grid(c, (16, 64, 64, 3))


def test_slot_baselines_below_their_floor_run_at_the_floor():
    from launch import motion_qa

    plan, note = motion_qa.slot_plan(motion_qa.CacheSpec("pool", "pool", 8), (16, 16, 16))
    assert plan.real_tokens == 16 and "cannot reach 8" in note
    plan, note = motion_qa.slot_plan(motion_qa.CacheSpec("frames", "frames", 8), (16, 16, 16))
    assert plan.real_tokens == 256 and note
    plan, note = motion_qa.slot_plan(motion_qa.CacheSpec("prune", "prune", 8), (16, 16, 16))
    assert plan.real_tokens == 8 and note == ""


def _arm(name, method, acc, fam, tokens, std=0.0, **kw):
    return {"name": name, "method": method, "cfg": kw.pop("cfg", {}), "accuracy": acc, "accuracy_std": std,
            "accuracy_by_family": fam, "accuracy_by_family_std": {k: std for k in fam}, "visual_tokens": tokens,
            "percent_tokens": 100 * tokens / 4096, "seeds": [0, 1], "steps": 10, **kw}


def test_target_checks_report_met_and_missed():
    fam_td = {"direction": 0.8, "order": 0.7}
    arms = [_arm("token_dynamics", "token_dynamics", 0.6, fam_td, 4),
            _arm("base_only", "base_only", 0.4, {"direction": 0.3, "order": 0.3}, 4, std=0.01),
            _arm("prune", "prune", 0.5, {"direction": 0.9, "order": 0.7}, 4),
            _arm("adaptive (elbow)", "token_dynamics", 0.595, fam_td, 3.5, cfg={"adaptive": "elbow"},
                 eval_only_of="token_dynamics"),
            _arm("none (all tokens)", "none", 0.61, fam_td, 4096)]
    checks = {c["target"].split(":")[0]: c["status"] for c in report.target_checks(arms, {})}
    first = next(k for k in checks if k.startswith("token dynamics at <= 0.1%"))
    assert checks[first] == "met"                                  # 0.60 / 0.61 = 98.4%
    assert checks["token dynamics above `base_only` on direction/order"] == "met"
    assert checks["token dynamics above `prune` on direction/order"] == "missed"
    assert checks["adaptive (elbow)"] == "met"
    lad, sentence = report.ladder_table(arms)
    assert "not run" in lad and "best first" in sentence
