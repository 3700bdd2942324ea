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
    assert [a["name"] for a in saved] == ["token_dynamics", "base_only", "base + map (no attention)"]
    with open(os.path.join(out, "motion_qa_meta.json")) as f:
        meta = json.load(f)
    n_tokens = 8 * 4 * 4                      # tiny: 8 frames of 32 px, 8-px patches
    assert meta["n_tokens"] == n_tokens and meta["eval_examples"] == 32
    for a in saved:
        for k in REQUIRED:
            assert k in a, (a["name"], k)
        assert a["seeds"] == ([0] if a["method"] == "base_map" else [0, 1])   # headline arms: 2 seeds
        assert a["steps"] == cfg.train.steps
        assert 0.0 <= a["accuracy"] <= 1.0
        assert set(a["accuracy_by_family"]) == set(meta["families"])
        # K = 4 clusters of 128 tokens (an empty cluster would lower it; never raise it);
        # base + map adds one map token per frame (8)
        extra = 8 if a["method"] == "base_map" else 0
        assert 1 + extra <= a["visual_tokens"] <= 4 + extra
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


def test_every_other_arm_runs_through_the_driver(tmp_path):
    """The arms the default tiny run does not train (baselines, ablations, the full-grid-only
    frames / TokenLearner / all-token arms) go through the same driver on tiny data."""
    from launch import motion_qa

    cfg = exp.get_config("tiny")
    cfg.workdir = str(tmp_path / "work")
    cfg.seeds = (0,)
    cfg.arms = "random_map,random_base,tome,prune,pool,frames,token_learner,none (all tokens)"
    cfg.train.none_init_from = "tome"      # the all-token arm warm-starts from a slot arm of this run
    arms = {a["name"]: a for a in motion_qa.run(cfg, str(tmp_path / "results"))}
    assert list(arms) == [s.strip() for s in cfg.arms.split(",")]
    n = 8 * 4 * 4                          # tiny: 8 frames of 4 x 4 tokens; budget 4
    expected = {"random_map": 4, "random_base": 4, "tome": 4, "prune": 4, "token_learner": 4,
                "pool": 8,                 # at least one token per frame
                "frames": 16,              # one whole frame
                "none (all tokens)": n}
    for name, a in arms.items():
        assert a["seeds"] == [0]
        if name in ("random_map", "random_base"):
            assert 1 <= a["visual_tokens"] <= 4, name     # K = 4 clusters; an empty one lowers it
        else:
            assert a["visual_tokens"] == expected[name], (name, a["visual_tokens"])
        assert 0.0 <= a["accuracy"] <= 1.0 and a["accuracy"] * 32 == pytest.approx(round(a["accuracy"] * 32))
        (s,) = a["per_seed"]
        assert np.isfinite(s["loss_first"]) and np.isfinite(s["loss_last"]), name
    assert arms["none (all tokens)"]["steps"] == cfg.train.none_steps
    assert arms["tome"]["steps"] == cfg.train.steps


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
    assert "| `base + map (no attention)` | not in this run |" in lad and "best first" in sentence
    speed = [c for c in report.target_checks(arms, {}) if "speed-up" in c["target"]]
    assert [c["status"] for c in speed] == ["not measured"]
    e2e = {"llm_side_100x": {"target": 100.0, "time": 1093.0, "flops": 311.0, "met": True},
           "e2e_2x": {"target": 2.0, "time": 1.5, "flops": 1.8, "met": False}}
    speed = [c for c in report.target_checks(arms, {"e2e_targets": e2e}) if "speed-up" in c["target"]]
    assert [c["status"] for c in speed] == ["met", "missed"] and "311.0x by FLOPs" in speed[0]["measured"]


def test_curriculum_first_draws_only_its_families_then_all():
    from launch import motion_qa

    ids = {"color": 0, "direction": 3, "order": 6}
    assert motion_qa.parse_curriculum("direction,order:600", ids) == ([3, 6], 600)
    assert motion_qa.parse_curriculum("", ids) == ([], 0)
    for bad in ("direction", "direction:x", "colour:10", ":5"):
        with pytest.raises(ValueError, match="curriculum"):
            motion_qa.parse_curriculum(bad, ids)
    family = np.array([0, 3, 6] * 20)
    it = motion_qa.batch_order(60, 4, seed=0, family=family, curriculum=([3], 10))
    first = np.stack([next(it) for _ in range(10)])
    assert set(family[first.ravel()]) == {3}                 # 20 direction examples, 2 epochs of them
    later = np.stack([next(it) for _ in range(15)])          # 60 examples = one epoch, each once
    assert sorted(later.ravel().tolist()) == list(range(60))
    with pytest.raises(ValueError, match="fewer than the batch size"):
        next(motion_qa.batch_order(60, 32, seed=0, family=family, curriculum=([3], 10)))


def test_default_run_leaves_the_costly_arms_to_the_full_grid():
    cfg = exp.get_config("")
    default = {a["name"] for a in exp.get_arms(cfg)}
    assert {"token_dynamics", "base_only", "base + map (no attention)", "random_map", "random_base", "tome",
            "prune", "pool", "adaptive (elbow)", "adaptive (silhouette)"} <= default
    assert not {"none (all tokens)", "frames", "token_learner"} & default
    cfg.full = True
    assert {"none (all tokens)", "frames", "token_learner", "token_dynamics K=16"} <= {a["name"] for a in exp.get_arms(cfg)}
    cfg.full, cfg.arms = False, "frames"                     # named explicitly, a full-only arm runs
    assert [a["name"] for a in exp.get_arms(cfg)] == ["frames"]


def test_readme_block_is_written_from_the_results(tiny_run, tmp_path):
    _, _, out = tiny_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_BEGIN}\nold table\n{report.README_END}\nafter\n")
    report.update_readme(str(readme), out)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{report.README_END}\nafter\n")
    assert "| token_dynamics | `token_dynamics` |" in text and "#### Targets" in text
    rel = os.path.relpath(out, str(tmp_path))
    assert f"]({rel}/accuracy_vs_tokens.png)" in text
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="block to replace"):
        report.update_readme(str(readme), out)


def test_e2e_targets_are_read_from_the_benchmark_json(tmp_path):
    from launch import motion_qa

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t = motion_qa.e2e_targets(os.path.join(root, "results"))         # the committed benchmark run
    assert set(t) == {"llm_side_100x", "e2e_2x"} and all(v["flops"] > 1 for v in t.values())
    assert motion_qa.e2e_targets(str(tmp_path)) is None


def test_report_only_rewrites_markdown_and_readme(tiny_run, tmp_path):
    import shutil
    from launch import motion_qa

    _, _, out = tiny_run
    res = tmp_path / "res"
    shutil.copytree(out, res)
    (res / "motion_qa.md").write_text("stale")
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.README_BEGIN}\n{report.README_END}\n")
    motion_qa.rewrite_report(str(res), str(readme))
    assert (res / "motion_qa.md").read_text().startswith("# Motion QA")
    assert "| token_dynamics | `token_dynamics` |" in readme.read_text()
    with pytest.raises(FileNotFoundError, match="finished run"):
        motion_qa.rewrite_report(str(tmp_path / "nothing"))


def test_reference_compares_on_its_subset_and_counts_the_warm_start():
    fam = {"direction": 0.5, "order": 0.5}
    td4 = _arm("token_dynamics K=4", "token_dynamics", 0.40, fam, 4, eval_examples=768, accuracy_subset=0.59)
    none = _arm("none (all tokens)", "none", 0.60, fam, 4096, eval_examples=192, steps=300, batch_size=8,
                init_from="base_only", init_examples=80_000)
    td4["percent_tokens"] = 0.098
    td4["batch_size"] = 32
    td4["steps"] = 2500
    row = next(c for c in report.target_checks([td4, none], {"eval_split": "test"})
               if c["target"].startswith(report.FULL_TARGET))
    # compared on the same first 192 videos: 0.59 / 0.60 = 98.3% (not 0.40 / 0.60 on different questions)
    assert row["status"] == "met" and "98.3%" in row["measured"] and "first 192 test videos" in row["measured"]
    assert "starts from `base_only`" in row["measured"]
    # a compressed arm above the all-token one on the same videos: the reference is no upper bound
    strong = _arm("base_only", "base_only", 0.50, fam, 8, eval_examples=768, accuracy_subset=0.65,
                  batch_size=32, steps=2500)
    row = next(c for c in report.target_checks([td4, strong, none], {"eval_split": "test"})
               if c["target"].startswith(report.FULL_TARGET))
    assert row["status"] == "not measured" and "scores below `base_only`" in row["target"]
    cold = dict(none, init_from="", init_examples=0)   # 2,400 examples vs 80,000: not an upper bound
    row = next(c for c in report.target_checks([td4, cold], {}) if c["target"].startswith(report.FULL_TARGET))
    assert row["status"] == "not measured" and "not a fair upper bound" in row["target"]


def test_default_report_reads_the_separate_reference_run(tmp_path):
    from launch import motion_qa

    assert motion_qa.reference_run(str(tmp_path)) is None
    ref = tmp_path / motion_qa.REFERENCE_DIR
    ref.mkdir()
    fam = {"direction": 0.5, "order": 0.5}
    td4 = _arm("token_dynamics K=4", "token_dynamics", 0.45, fam, 4, eval_examples=768, accuracy_subset=0.40,
               batch_size=32, steps=2500)
    td4["percent_tokens"] = 0.098
    none = _arm("none (all tokens)", "none", 0.50, fam, 4096, eval_examples=192, steps=300, batch_size=8,
                init_from="base_only", init_examples=80_000)
    (ref / "motion_qa.json").write_text(json.dumps([td4, none]))
    (ref / "motion_qa_meta.json").write_text(json.dumps({"eval_split": "test", "total_time_s": 10.0}))
    got = motion_qa.reference_run(str(tmp_path))
    assert got["none"]["accuracy"] == 0.50 and got["check"]["status"] == "missed"     # 0.40 / 0.50 = 80%
    meta = {"reference": got, "eval_split": "test"}
    row = next(c for c in report.target_checks([td4], meta) if c["target"].startswith(report.FULL_TARGET))
    assert row["status"] == "missed" and row["measured"].startswith("separate run in `reference/`")
    # the reference is a marked row of the table (and a point of the plot), with a note on how it was made
    shown = report.display_arms([td4], meta)
    assert [a["name"] for a in shown] == ["token_dynamics K=4", "none (all tokens)" + report.REFERENCE_MARK]
    notes = report.reference_notes([td4], meta)
    assert "starts from `base_only`" in notes[0] and "first 192 test videos" in notes[0]
    assert "scored identically in both" in notes[1]
    # a run whose shared arm scored differently says the reference is not about its arms
    other = dict(td4, accuracy=0.5)
    assert "disagree on shared arms" in report.reference_notes([other], meta)[1]
    # a run with its own all-token arm shows no second one
    assert report.display_arms([td4, none], meta) == [td4, none] and report.reference_notes([td4, none], meta) == []


def test_subset_accuracy_is_on_the_first_n_videos_for_every_arm():
    from launch import motion_qa

    answer = np.array([0, 1, 2, 3, 0, 1])
    s = [{"name": "a", "eval_examples": 6}, {"name": "none", "eval_examples": 2}]
    preds = {"a": [np.array([0, 0, 2, 3, 0, 1]), np.array([0, 1, 0, 0, 0, 0])], "none": [np.array([0, 1])]}
    motion_qa.add_subset_accuracy(s, preds, answer)
    assert s[0]["subset_examples"] == 2 and s[0]["accuracy_subset"] == pytest.approx(0.75)   # (1/2 + 2/2) / 2
    assert s[1]["accuracy_subset"] == 1.0


def test_warm_start_trains_on_from_the_given_weights_and_checks_them():
    import jax
    from launch import motion_qa
    from td_jax.data import tokenizer as tok_lib

    cfg = exp.get_config("tiny")
    c = motion_qa.effective(cfg)
    tok = tok_lib.make_tokenizer("word", 4)
    runner = motion_qa.Runner(c, tok)
    arm = next(a for a in exp.get_arms(cfg) if a["name"] == "base_only")
    model = runner.model(arm, (8, 4, 4))
    rng = np.random.default_rng(0)
    n, length = 8, 12
    ids = rng.integers(10, tok.vocab_size, (n, length)).astype(np.int32)
    ids[:, 1] = tok.video_token_id
    arrays = {"input_ids": ids, "attention_mask": np.ones((n, length), np.int32),
              "loss_mask": np.r_[np.zeros(8), np.ones(4)][None].repeat(n, 0).astype(np.int32),
              "slots": rng.normal(size=(n, 4, 32)).astype(np.float32), "slot_mask": np.ones((n, 4), bool)}
    kw = dict(steps=1, batch_size=4, label="warm")
    start = motion_qa.train_arm(runner, model, arrays, seed=3, **kw)["params"]
    warm = motion_qa.train_arm(runner, model, arrays, seed=0, init_params=start, **kw)["params"]
    cold = motion_qa.train_arm(runner, model, arrays, seed=0, **kw)["params"]
    dist = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))  # noqa: E731
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert dist(warm, start) < 0.01 < dist(cold, start)     # one Adam step (lr 1e-3) from the given weights
    bad = jax.tree.map(lambda p: p[..., :1] if p.ndim else p, start)
    with pytest.raises(ValueError, match="warm-start weights do not fit"):
        motion_qa.train_arm(runner, model, arrays, seed=0, init_params=bad, **kw)


def test_warm_start_source_must_be_a_trained_slot_arm_of_the_run():
    from launch import motion_qa

    cfg = exp.get_config()
    c = motion_qa.effective(cfg)
    cfg.arms = "token_dynamics,none (all tokens)"
    with pytest.raises(ValueError, match="must be a trained arm of this run"):
        motion_qa.warm_start_source(exp.get_arms(cfg), c)
    c["train"]["none_init_from"] = "token_dynamics"
    with pytest.raises(ValueError, match="only a slot arm"):
        motion_qa.warm_start_source(exp.get_arms(cfg), c)
    cfg.arms = "base_only,none (all tokens)"
    c["train"]["none_init_from"] = "base_only"
    assert motion_qa.warm_start_source(exp.get_arms(cfg), c) == "base_only"
    c["train"]["none_init_from"] = ""
    assert motion_qa.warm_start_source(exp.get_arms(cfg), c) == ""


@pytest.mark.parametrize("arm_name", ["base_only", "token_dynamics", "none (all tokens)"])
def test_shared_prefix_option_scores_equal_full_row_scores(arm_name):
    # the eval path runs video + prompt once and scores every option against its KV cache;
    # it must equal scoring each option's whole row (sequence_logprob), for slot, dynamics
    # and all-token models, with a masked slot and options of different lengths
    import jax
    from launch import motion_qa
    from td_jax.data import tokenizer as tok_lib
    from td_jax.models.vlm import sequence_logprob

    c = motion_qa.effective(exp.get_config("tiny"))
    c["model"]["num_layers"] = 2
    tok = tok_lib.make_tokenizer("word", 4)
    runner = motion_qa.Runner(c, tok)
    every = exp.get_config("")
    every.full = True
    arm = next(a for a in exp.get_arms(every) if a["name"] == arm_name)
    grid = (8, 4, 4)                                          # tiny: 8 frames of 32 px, 8-px patches
    model = runner.model(dict(arm, budget=4), grid)
    rng = np.random.default_rng(1)
    b, d = 3, c["model"]["hidden_size"]
    questions = ["what color is the square", "which way does the red circle move", "what appears first"]
    options = [["red", "green", "dark blue", "yellow"], ["up", "down", "left", "right"], ["a", "b c d", "e", "f g"]]
    text = [tok_lib.encode_mc_options(tok, q, o, 40, False) for q, o in zip(questions, options)]
    one = [tok_lib.encode_mc(tok, q, o, 0, 40, "text", False) for q, o in zip(questions, options)]
    batch = {f"opt_{k}": np.stack([t[k] for t in text]) for k in text[0]}
    batch.update({k: np.stack([t[k] for t in one]) for k in one[0]})
    mask = np.ones((b, 4), bool)
    mask[1, 2] = False
    batch.update(slots=rng.normal(size=(b, 4, d)).astype(np.float32), slot_mask=mask,
                 base=rng.normal(size=(b, 4, d)).astype(np.float32), valid=mask,
                 dmap=rng.integers(0, 4, (b,) + grid).astype(np.int32), scale=np.ones(b, np.float32),
                 frames=rng.integers(0, 255, (b, 8, 32, 32, 3)).astype(np.uint8))
    names = motion_qa.model_inputs(model.kind)
    init_batch = {k: batch[k] for k in names}
    params = jax.jit(lambda k: model.init({"params": k, "compress": k}, init_batch)["params"])(jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape), params)  # non-zero residuals
    vis = [n for n in names if n not in ("input_ids", "attention_mask", "loss_mask")]
    shared = model.apply({"params": params}, {**{k: batch[k] for k in vis}, **{k: v for k, v in batch.items() if k.startswith("opt_")}},
                         rngs={"compress": jax.random.key(3)})
    rows = {k[4:]: v.reshape((b * 4,) + v.shape[2:]) for k, v in batch.items() if k.startswith("opt_")}
    rows.update({k: np.repeat(batch[k], 4, axis=0) for k in vis})
    logits = model.apply({"params": params}, rows, rngs={"compress": jax.random.key(3)})
    full = np.asarray(sequence_logprob(logits, rows["input_ids"], rows["loss_mask"])).reshape(b, 4)
    assert shared.shape == (b, 4)
    np.testing.assert_allclose(np.asarray(shared), full, rtol=1e-4, atol=1e-4)


def test_all_token_microbatches_give_the_same_step():
    # the all-token arm accumulates micro-batches: same loss and update as the whole batch at once
    import jax
    from launch import motion_qa
    from td_jax.data import tokenizer as tok_lib

    tok = tok_lib.make_tokenizer("word", 4)
    every = exp.get_config("")
    every.full = True
    arm = next(a for a in exp.get_arms(every) if a["method"] == "none")
    rng = np.random.default_rng(2)
    n, length = 4, 12
    ids = rng.integers(10, tok.vocab_size, (n, length)).astype(np.int32)
    ids[:, 1] = tok.video_token_id
    loss_mask = np.zeros((n, length), np.float32)
    loss_mask[:, 8:] = 1.0
    loss_mask[0, 10:] = 0.0                       # unequal target counts per micro-batch
    arrays = {"input_ids": ids, "attention_mask": np.ones((n, length), bool), "loss_mask": loss_mask,
              "frames": rng.integers(0, 255, (n, 8, 32, 32, 3)).astype(np.uint8)}
    out = {}
    for micro in (1, 2, 4):
        c = motion_qa.effective(exp.get_config("tiny"))
        c["train"]["none_microbatches"] = micro
        runner = motion_qa.Runner(c, tok)
        model = runner.model(arm, (8, 4, 4))
        assert runner.microbatches(model) == micro
        tr = motion_qa.train_arm(runner, model, arrays, steps=1, batch_size=4, seed=0, label=f"micro {micro}")
        out[micro] = (tr["loss_first"], tr["params"])
    for micro in (2, 4):
        assert out[micro][0] == pytest.approx(out[1][0], rel=1e-5)
        for a, b in zip(jax.tree.leaves(out[micro][1]), jax.tree.leaves(out[1][1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    cfg = exp.get_config("tiny")
    cfg.train.none_microbatches = 3               # 4 is not divisible by 3
    with pytest.raises(ValueError, match="none_microbatches"):
        motion_qa.effective(cfg)
