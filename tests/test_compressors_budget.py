"""Budget resolution, per-method knobs, and the analytic prefill FLOP count."""
import jax
import jax.numpy as jnp
import pytest

from td_jax.compressors import frames as _frames  # noqa: F401  (registers)
from td_jax.compressors import none as _none  # noqa: F401
from td_jax.compressors import prune as _prune  # noqa: F401
from td_jax.compressors import token_learner as _tl  # noqa: F401
from td_jax.compressors.budget import plan, pool_grid_for, resolve_budget
from td_jax.eval.budget import (QWEN2_0_5B, DecoderShape, decoder_from_config, prefill_flops,
                                token_report)

LLAVA_OV = (32, 27, 27)  # 32 frames of 27x27 SigLIP tokens = 23,328
N_OV = 23328


@pytest.mark.parametrize("spec,want", [("0.07%", 16), ("1%", 233), ("10%", 2333), (16, 16), ("16", 16),
                                       (0.0007, 16), ("0.5", 11664), ("100%", N_OV), (1.0, N_OV),
                                       ("0.0001%", 1), (50000, 50000)])
def test_resolve_budget(spec, want):
    assert resolve_budget(spec, N_OV) == want


@pytest.mark.parametrize("spec", ["0%", "150%", 0.0, 1.5, 0, -3, "abc", "-2", float("nan")])
def test_resolve_budget_rejects(spec):
    with pytest.raises(ValueError, match="budget"):
        resolve_budget(spec, N_OV)


def test_resolve_budget_types():
    with pytest.raises(TypeError):
        resolve_budget(True, N_OV)
    with pytest.raises(TypeError):
        resolve_budget([16], N_OV)


def test_plans_at_the_papers_budgets():
    p = plan("tome", "0.07%", LLAVA_OV)
    assert (p.budget, p.real_tokens, p.knobs["rounds"]) == (16, 16, 11)
    assert sum(p.knobs["r"]) == N_OV - 16
    assert plan("prune", "1%", LLAVA_OV).knobs == {"k": 233}
    pf = plan("prune", "1%", LLAVA_OV, mode="frame")
    assert (pf.real_tokens, pf.knobs) == (32 * 7, {"k_per_frame": 7})
    fr = plan("frames", "10%", LLAVA_OV)
    assert (fr.cfg, fr.real_tokens) == ({"num_frames": 3}, 3 * 729)
    po = plan("pool", "10%", LLAVA_OV)
    assert (po.cfg, po.real_tokens) == ({"kind": "area", "out_hw": (8, 8)}, 32 * 64)
    assert abs(po.kept_fraction - 2048 / N_OV) < 1e-12
    # below one token per frame, area pooling boxes time too: 16 boxes of 2 frames
    p16 = plan("pool", "0.07%", LLAVA_OV)
    assert (p16.cfg["out_t"], p16.cfg["out_hw"], p16.real_tokens) == (16, (1, 1), 16)
    # LLaVA-OneVision's own setting: bilinear, stride 2 -> 14x14 = 196 per frame
    ov = plan("pool", 32 * 196, LLAVA_OV, kind="bilinear", stride=2)
    assert (ov.real_tokens, ov.knobs["grid"]) == (32 * 196, (32, 14, 14))
    tl = plan("token_learner", "1%", LLAVA_OV)
    assert tl.knobs == {"tokens_per_frame": 7}
    assert plan("none", N_OV, LLAVA_OV).real_tokens == N_OV


def test_plan_refuses_unreachable_budgets():
    with pytest.raises(ValueError, match="below one frame"):
        plan("frames", "1%", LLAVA_OV)
    with pytest.raises(ValueError, match="below one token per frame"):
        plan("pool", "0.07%", LLAVA_OV, kind="bilinear")
    with pytest.raises(ValueError, match="keeps all"):
        plan("none", "10%", LLAVA_OV)
    with pytest.raises(ValueError, match="> budget"):
        plan("pool", 100, LLAVA_OV, kind="bilinear", stride=2)
    with pytest.raises(KeyError, match="known"):
        plan("nope", 16, LLAVA_OV)
    with pytest.raises(ValueError, match="shape"):
        plan("tome", 16, (27, 27))


def test_pool_grid_keeps_aspect_ratio_then_pools_time():
    assert pool_grid_for(4 * 6, (4, 6, 9)) == (4, 2, 3)
    assert pool_grid_for(4 * 50, (4, 27, 27)) == (4, 7, 7)
    assert pool_grid_for(18, (1, 6, 12)) == (1, 3, 6)
    assert pool_grid_for(10 ** 6, (2, 5, 7)) == (2, 5, 7)  # never upsamples
    assert pool_grid_for(8, (16, 16, 16)) == (8, 1, 1)     # the motion-QA budget: time boxes of 2 frames
    with pytest.raises(ValueError, match="one token per frame"):
        pool_grid_for(8, (16, 16, 16), pool_time=False)


def test_plan_drives_the_compressor():
    x = jnp.ones((1, 4, 6, 6, 8))
    p = plan("frames", "50%", (4, 6, 6))
    out = p.compressor()(x, key=jax.random.key(0), budget=p.budget)
    assert int(out.mask.sum()) == p.real_tokens == 72


def test_qwen2_prefill_flops_by_hand():
    f = prefill_flops(QWEN2_0_5B, 1000, causal=False, logit_tokens=0)
    d, hd, layers = 896, 64, 24
    assert f["projections"] == layers * 2 * 1000 * d * (2 * 14 * hd + 2 * 2 * hd)
    assert f["attention"] == layers * 4 * 14 * hd * 1000 * 1000
    assert f["mlp"] == layers * 2 * 1000 * d * 4864 * 3
    assert f["lm_head"] == 0
    causal = prefill_flops(QWEN2_0_5B, 1000)["attention"]
    assert causal == layers * 4 * 14 * hd * (1000 * 1001 // 2)


def test_token_report_savings():
    r = token_report(N_OV, 16, text_tokens=64, decoder=QWEN2_0_5B)
    assert r["kept_pct"] == pytest.approx(100 * 16 / N_OV)
    assert r["flops_saved"] == r["flops_full"] - r["flops_compressed"]
    assert r["llm_speedup"] > 200  # 23,392 vs 80 tokens: quadratic attention makes it more than linear
    assert token_report(100, 100, decoder=QWEN2_0_5B)["flops_saved"] == 0
    with pytest.raises(ValueError):
        token_report(0, 1)
    with pytest.raises(ValueError, match="kv_heads"):
        DecoderShape(layers=1, width=64, heads=4, kv_heads=3, mlp_width=8, vocab=8)


def test_analytic_flops_agree_with_xla_cost_analysis():
    """The analytic count matches XLA's own count for the project's decoder (within the
    elementwise ops XLA also counts)."""
    from td_jax.models.configs import LLMConfig
    from td_jax.models.llm import Qwen2LM

    cfg = LLMConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4,
                    num_kv_heads=2)
    model = Qwen2LM(cfg)
    ids = jnp.zeros((1, 96), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
    cost = jax.jit(lambda v, i: model.apply(v, i)).lower(variables, ids).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # the dense implementation scores all 96 x 96 pairs and runs the LM head on every position
    analytic = prefill_flops(decoder_from_config(cfg), 96, causal=False, logit_tokens=96)["total"]
    assert 1.0 <= cost["flops"] / analytic < 1.1


def test_comparison_script_rows():
    from experiments.benchmarks import compare_compressors as cc

    cc.import_methods()
    x = cc.synthetic_batch(0, 1, 2, 4, 8)
    rows = cc.compare(x, ["none", "frames", "tome", "prune", "visionzip", "dycoke"], ["25%"], {}, warmup=0,
                      repeats=1, text_tokens=0, seed=0, method_budgets={"prune": ["1"]})
    by = {r["method"]: r for r in rows}
    assert by["none"]["rel_err"] == 0.0 and by["none"]["real_tokens"] == 32
    assert "below one frame" in by["frames"]["error"]
    assert by["tome"]["real_tokens"] == 8 and 0 < by["tome"]["rel_err"] < 1
    assert by["prune"]["rel_err"] is None and by["prune"]["real_tokens"] == 1    # its own budget list
    assert by["visionzip"]["real_tokens"] == 8 and 0 < by["visionzip"]["rel_err"] < 1
    assert by["dycoke"]["rel_err"] is None                                      # it drops tokens
    assert by["tome"]["x_tome"] == 1.0 and by["visionzip"]["x_tome"] > 0 and by["visionzip"]["x_token_dynamics"] is None
    table = cc.format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "unreachable" in table and "| x ToMe |" in table
