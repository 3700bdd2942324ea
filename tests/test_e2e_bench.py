"""The end-to-end efficiency benchmark (experiments/benchmarks/e2e_bench.py) at tiny sizes:
its report is well formed, its ratios come from the measured times, its extrapolation is
the FLOP ratio, and its analytic FLOP counts agree with XLA's own count."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest

from experiments.benchmarks import e2e_bench as eb
from td_jax.eval.budget import decoder_from_config, prefill_flops
from td_jax.models.configs import LLMConfig, VisionConfig

TINY = eb.Settings(frames=4, budget=4, text_tokens=8, new_tokens=2, full_frames=(1, 2), vision_frames=1,
                   max_prefill_tokens=40, llm="tiny_llm", vision="tiny_vision", select_layer=-2,
                   warmup=0, repeats=2, td_cfg=(("iters", 5),))
ENV = {"command": "python -m experiments.benchmarks.e2e_bench (test)", "cpus": 2, "platform": "test",
       "jax": jax.__version__, "load_start": [0.5, 0.5, 0.5], "load_end": [0.5, 0.5, 0.5]}


@pytest.fixture(scope="module")
def bench():
    res = eb.run(TINY)
    summ = eb.summarize(TINY, res)
    return res, summ, eb.format_report(TINY, res, summ, ENV)


def test_report_is_well_formed(bench):
    res, summ, report = bench
    assert [r["path"] for r in summ["rows"]] == ["full", "pool", "token_dynamics"]
    # tiny vision: 32 px / patch 8 -> 4x4 grid; pooled 2x2 per frame; K = budget
    assert res["visual_tokens"] == {"full": 4 * 16, "pool": 4 * 4, "token_dynamics": 4}
    for r in summ["rows"]:
        assert set(r["stage_s"]) == set(eb.STAGES)
        assert all(v >= 0 and math.isfinite(v) for v in r["stage_s"].values())
        assert r["e2e_s"] > 0 and r["llm_side_flops"] > 0
        assert f"| {r['path']} | {r['visual_tokens']:,} |" in report
    assert res["compression"]["token_dynamics"]["real_tokens"] == 4
    assert res["compression"]["token_dynamics"]["config"]["iters"] == 5
    assert "## LLM side" in report and "## End to end" in report and "## Targets" in report
    assert "extrapolated by FLOPs only" in report          # full at 4 frames does not fit 40 tokens
    assert set(summ["targets"]) == {"llm_side_100x", "e2e_2x"}
    for t in summ["targets"].values():
        assert t["met"] == (t["time"] >= t["target"])


def test_ratios_come_from_measured_times(bench):
    res, summ, _ = bench
    rows = {r["path"]: r for r in summ["rows"]}
    for r in rows.values():
        assert r["speedup_llm_side_s"] == pytest.approx(rows["full"]["llm_side_s"] / r["llm_side_s"])
        assert r["speedup_e2e_s"] == pytest.approx(rows["full"]["e2e_s"] / r["e2e_s"])
        assert r["llm_side_s"] == pytest.approx(r["stage_s"]["compression"] + r["stage_s"]["prefill"])
        assert r["e2e_s"] == pytest.approx(sum(r["stage_s"].values()))
    # each stage time is the median of its timed runs (the tower's scaled by frames)
    v = res["stages"]["vision"]
    assert v["median_s"] == pytest.approx(sorted(v["times"])[len(v["times"]) // 2] if len(v["times"]) % 2
                                          else sum(sorted(v["times"])[:2]) / 2)
    assert rows["full"]["stage_s"]["vision"] == pytest.approx(v["median_s"] * TINY.frames / TINY.vision_frames)
    td = res["compression"]["token_dynamics"]
    assert rows["token_dynamics"]["stage_s"]["compression"] == pytest.approx(td["median_s"])
    assert rows["full"]["stage_s"]["compression"] == 0.0
    # the full prefill: measured at 1 frame (2 frames would exceed 40 tokens), scaled by the FLOP ratio
    pf = res["prefill"]["full"]
    assert [r["frames"] for r in pf["runs"]] == [1] and pf["extrapolated"]
    assert pf["est_s"] == pytest.approx(pf["runs"][0]["median_s"] * pf["dense_flops"] / pf["runs"][0]["dense_flops"])
    assert pf["seq_len"] == 64 + 1 + 8
    assert not res["prefill"]["pool"]["extrapolated"] and not res["prefill"]["token_dynamics"]["extrapolated"]
    assert res["full_compile"]["seq_len"] == 73 and res["full_compile"]["xla_flops"] > 0


def test_prefill_frame_choice_and_settings_errors():
    s = dataclasses.replace(TINY, full_frames=(1, 2), max_prefill_tokens=200)
    assert eb.prefill_frames(s, "full", 16) == [1, 2, 4]       # 4 frames fit: measured directly too
    assert eb.prefill_frames(TINY, "full", 16) == [1]
    assert eb.prefill_frames(dataclasses.replace(TINY, max_prefill_tokens=30), "pool", 4) == [4]
    assert eb.prefill_frames(dataclasses.replace(TINY, max_prefill_tokens=20), "pool", 4) == [2]
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        eb.prefill_frames(dataclasses.replace(TINY, max_prefill_tokens=10), "full", 16)
    with pytest.raises(ValueError, match="full_frames"):
        dataclasses.replace(TINY, full_frames=(8,))
    with pytest.raises(ValueError, match="'full'"):
        dataclasses.replace(TINY, paths=("pool", "token_dynamics"))
    with pytest.raises(ValueError, match="unknown stages"):
        dataclasses.replace(TINY, stages=("vision", "tokenize"))
    with pytest.raises(ValueError, match="vision_frames"):
        dataclasses.replace(TINY, vision_frames=5)
    with pytest.raises(ValueError, match="not a decoder config"):
        eb._configs(dataclasses.replace(TINY, llm="tiny_vision"))


# Analytic counts vs XLA.  XLA also counts the elementwise work (norms, softmax, RoPE,
# activations) that the analytic matmul count leaves out: stated tolerance, XLA / analytic
# in [1.0, 1.12) at these widths (it shrinks as the width grows).
LLM = LLMConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_layers=2, num_heads=4, num_kv_heads=2)
VIS = VisionConfig(image_size=64, patch_size=8, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4)
TOL = (1.0, 1.12)


def _params(module, *args, **kw):
    return jax.eval_shape(lambda: eb._init_params(module, jax.random.key(0), *args, **kw))


def test_prefill_and_generate_flops_match_xla():
    model, prefill_fn, make_generate = eb.llm_fns(LLM)
    params = _params(model, jnp.zeros((1, 1), jnp.int32))
    sv, text = 97, 31
    c = eb.compile_only(prefill_fn, (params, jax.ShapeDtypeStruct((1, sv, 128), jnp.float32),
                                     jax.ShapeDtypeStruct((1, text), jnp.int32)))
    dense = prefill_flops(decoder_from_config(LLM), sv + text, causal=False)["total"]
    assert TOL[0] <= c["xla_flops"] / dense < TOL[1]
    # one decoding step (XLA counts a scan body once) after a 200-token context
    cache = jax.eval_shape(lambda: eb.synthetic_cache(LLM, 200, 1, jax.random.key(0)))
    g = eb.compile_only(make_generate(1), (params, cache, jax.ShapeDtypeStruct((1,), jnp.int32)))
    assert TOL[0] <= g["xla_flops"] / eb.generate_flops(decoder_from_config(LLM), 200, 1) < TOL[1]


def test_vision_and_projector_flops_match_xla():
    from td_jax.models.vit import Projector, VisionTower
    tower = VisionTower(VIS)
    x = jax.ShapeDtypeStruct((3, 64, 64, 3), jnp.float32)
    params = _params(tower, jnp.zeros((1, 64, 64, 3)), select_layer=-1)
    c = eb.compile_only(lambda p, x: tower.apply({"params": p}, x, select_layer=-1), (params, x))
    assert eb.vision_layers_run(VIS, -1) == 2 and eb.vision_layers_run(VIS, -2) == 1
    assert TOL[0] <= c["xla_flops"] / eb.vision_flops(VIS, 3, 2) < TOL[1]
    proj = Projector(256, kind="mlp2x_gelu")
    pp = _params(proj, jnp.zeros((1, 1, 128)))
    c = eb.compile_only(lambda p, x: proj.apply({"params": p}, x), (pp, jax.ShapeDtypeStruct((1, 500, 128), jnp.float32)))
    assert TOL[0] <= c["xla_flops"] / eb.projector_flops(500, 128, 256) < TOL[1]


def test_kmeans_flops_match_xla_when_every_loop_runs_once():
    """With k = 2, one Lloyd step, one initialisation and one refinement pass every loop
    body of the flat k-means path runs once, so XLA's count (bodies counted once) covers the
    whole run.  The documented call also compiles the fallback taken only when a row fails
    the fast rule (XLA counts both branches of that cond), so the count is taken of the path
    that runs on ordinary tokens (cluster._flat_fast).  At k = 2 the O(N D) elementwise work
    (row norms, normalisation, masks) is as large as the O(N D k) GEMMs, hence the wider
    stated tolerance: XLA / analytic in [1.0, 2.0); the exact differences below pin the
    per-step terms."""
    from td_jax import cluster
    n, d = 600, 256
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    opts = dict(iters=1, refine_iters=1, sample_size=None, seed_sample_size=None, n_local_trials=None, n_init=1,
                block_rows=4096)
    fn = lambda x, key: cluster._flat_fast(x, jnp.ones((n,), bool), key, 1e-4, jnp.ones((2,), bool), opts)
    c = eb.compile_only(fn, (x, jax.eval_shape(lambda: jax.random.key(0))))
    analytic = eb.kmeans_flops(n, d, 2, iters=1, n_init=1, refine_iters=1)
    assert 1.0 <= c["xla_flops"] / analytic < 2.0
    # more Lloyd steps / initialisations / refinements add exactly their GEMMs
    assert eb.kmeans_flops(n, d, 2, iters=3, n_init=1, refine_iters=1) - analytic == 2 * 4 * 600 * d * 2
    assert eb.kmeans_flops(n, d, 2, iters=1, n_init=1, refine_iters=2) - analytic == 6 * n * d * 2
