"""Model behaviour: sizes, masks, padding, splicing, loss/MC scoring, generation, sharding."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from td_jax.models import configs as C
from td_jax.models import llm as llm_lib
from td_jax.models import vlm as vlm_lib
from td_jax.models.llm import Qwen2LM
from td_jax.models.sharding import AXIS_RULES, MESH_AXES
from td_jax.models.vit import VisionTower
from td_jax.models.vlm import VideoLLM

VID = C.TINY_VLM.video_token_id


def _count(module, *args):
    v = jax.eval_shape(lambda: module.init({"params": jax.random.PRNGKey(0), "compress": jax.random.PRNGKey(1)}, *args))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(v["params"])))


# ----------------------------------------------------------------------------- real sizes, abstractly
def test_qwen2_0_5b_parameter_count():
    assert _count(Qwen2LM(C.QWEN2_0_5B), jnp.zeros((1, 2), jnp.int32)) == 494_032_768


def _siglip_formula(c: C.VisionConfig) -> int:
    D, F, p = c.hidden_size, c.intermediate_size, c.patch_size
    mlp = D * F + F + F * D + D
    block = 2 * 2 * D + 4 * (D * D + D) + mlp
    head = D + 3 * (D * D + D) + (D * D + D) + 2 * D + mlp
    return p * p * 3 * D + D + c.grid ** 2 * D + c.num_layers * block + 2 * D + (head if c.use_head else 0)


def test_siglip_so400m_parameter_count_from_architecture():
    n = _count(VisionTower(C.SIGLIP_SO400M), jnp.zeros((1, 384, 384, 3)))
    assert n == _siglip_formula(C.SIGLIP_SO400M) == 428_225_600


def test_real_sizes_match_transformers_meta_models():
    import torch                                     # the [convert] extra; CI installs it
    import transformers
    with torch.device("meta"):
        q = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, tie_word_embeddings=True))
        s = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
            patch_size=14))
    assert sum(p.numel() for p in q.parameters()) == 494_032_768
    assert sum(p.numel() for p in s.parameters()) == 428_225_600
    ids = jnp.asarray([[C.LLAVA_OV_0_5B.video_token_id, 1]])
    vlm = _count(VideoLLM(C.LLAVA_OV_0_5B), ids, None, jnp.zeros((1, 1, 384, 384, 3), jnp.uint8))
    proj = 1152 * 896 + 896 + 896 * 896 + 896
    s26 = _siglip_formula(C.SIGLIP_SO400M_LLAVA)
    assert vlm == 494_032_768 + s26 + proj + 896 == 893_618_208


# ----------------------------------------------------------------------------- tiny VLM fixtures
@pytest.fixture(scope="session")   # cheap: rebuilt per xdist worker, so its tests spread
def tiny():
    cfg = C.TINY_VLM.replace(budget=2 * 16)                         # 2 frames of a 4x4 grid, compressor none
    module = VideoLLM(cfg)
    rs = np.random.RandomState(0)
    frames = jnp.asarray(rs.randint(0, 256, (2, 2, 32, 32, 3)), jnp.uint8)
    ids = jnp.asarray([[1, 7, VID, 9, 10, 11], [1, VID, 12, 13, 0, 0]], jnp.int32)
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    params = jax.jit(module.init)({"params": jax.random.PRNGKey(0)}, ids, mask, frames)["params"]
    params = nn.unbox(params)
    apply = jax.jit(lambda p, i, m, f: module.apply({"params": p}, i, m, f))
    return dict(cfg=cfg, module=module, params=params, frames=frames, ids=ids, mask=mask, apply=apply)


def test_vlm_logits_shape_and_padding_invariance(tiny):
    logits = tiny["apply"](tiny["params"], tiny["ids"], tiny["mask"], tiny["frames"])
    assert logits.shape == (2, 6, C.TINY_LLM.vocab_size)
    # row 1 alone, unpadded, gives the same logits at its real positions
    alone = tiny["apply"](tiny["params"], tiny["ids"][1:, :4], tiny["mask"][1:, :4], tiny["frames"][1:])
    np.testing.assert_allclose(np.asarray(logits[1, :4]), np.asarray(alone[0]), atol=1e-5)


def test_masked_visual_slots_are_invisible(tiny):
    """A larger budget only adds masked pad slots: the text logits must not change."""
    cfg = tiny["cfg"].replace(budget=2 * 16 + 5)
    logits = jax.jit(VideoLLM(cfg).apply)({"params": tiny["params"]}, tiny["ids"], tiny["mask"], tiny["frames"])
    ref = tiny["apply"](tiny["params"], tiny["ids"], tiny["mask"], tiny["frames"])
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=1e-5)


def test_precomputed_visual_tokens_equal_frames(tiny):
    module, p = tiny["module"], tiny["params"]
    x = (tiny["frames"].astype(jnp.float32) / 255.0 - 0.5) / 0.5
    B, T = x.shape[:2]
    feats = jax.jit(lambda v, x: VisionTower(C.TINY_VISION).apply({"params": v}, x, select_layer=-2))(
        p["vision"], x.reshape((B * T,) + x.shape[2:]))
    vis = feats.reshape(B, T, 4, 4, -1)
    out = jax.jit(lambda p, v: module.apply({"params": p}, tiny["ids"], tiny["mask"], None, v))(p, vis)
    ref = tiny["apply"](p, tiny["ids"], tiny["mask"], tiny["frames"])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    # the same through already-projected tokens, with a model that has no vision tower
    proj = jax.jit(lambda p, v: module.apply({"params": p}, None, v, method=VideoLLM.encode_video))(p, vis)
    cfg2 = tiny["cfg"].replace(vision=None, mm_hidden_size=C.TINY_VISION.hidden_size, visual_tokens_stage="projected")
    p2 = {k: v for k, v in p.items() if k != "vision"}
    out2 = jax.jit(lambda p, v: VideoLLM(cfg2).apply({"params": p}, tiny["ids"], tiny["mask"], None, v))(p2, proj)
    np.testing.assert_allclose(np.asarray(out2), np.asarray(ref), atol=1e-5)


def test_bad_inputs_raise(tiny):
    module, p = tiny["module"], tiny["params"]
    two = np.asarray(tiny["ids"]).copy()
    two[0, 4] = VID
    with pytest.raises(ValueError, match="exactly one video_token_id"):
        module.apply({"params": p}, two, tiny["mask"], tiny["frames"])
    # errors show the shape the caller passed, not the tower's flattened B*T view
    with pytest.raises(ValueError, match=r"frames must be \[B, T, 32, 32, 3\].*got shape \(2, 2, 16, 16, 3\): resize"):
        module.apply({"params": p}, tiny["ids"], tiny["mask"], tiny["frames"][:, :, :16, :16])
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 3, 32, 32\): channels-first"):
        module.apply({"params": p}, tiny["ids"], tiny["mask"], jnp.moveaxis(tiny["frames"], -1, 2))
    with pytest.raises(ValueError, match="exactly one of frames"):
        module.apply({"params": p}, tiny["ids"], tiny["mask"])
    with pytest.raises(ValueError, match="width 32"):
        module.apply({"params": p}, tiny["ids"], tiny["mask"], None, jnp.zeros((2, 2, 4, 4, 7)))
    with pytest.raises(KeyError, match="unknown compressor"):
        VideoLLM(tiny["cfg"].replace(compressor="nope")).init(jax.random.PRNGKey(0), tiny["ids"], tiny["mask"], tiny["frames"])


def test_loss_and_multiple_choice_scoring(tiny):
    logits = tiny["apply"](tiny["params"], tiny["ids"], tiny["mask"], tiny["frames"])
    loss_mask = jnp.zeros((2, 6), jnp.float32).at[0, 5].set(1.0).at[1, 3].set(1.0)
    loss, metrics = vlm_lib.next_token_loss(logits, tiny["ids"], loss_mask)
    lp = jax.nn.log_softmax(logits, -1)
    manual = -(lp[0, 4, tiny["ids"][0, 5]] + lp[1, 2, tiny["ids"][1, 3]]) / 2
    np.testing.assert_allclose(float(loss), float(manual), rtol=1e-5)
    assert float(metrics["num_target_tokens"]) == 2
    options = jnp.asarray([11, 13, 20])
    scores = vlm_lib.mc_logits(logits, loss_mask, options)
    np.testing.assert_allclose(np.asarray(scores[0]), np.asarray(logits[0, 4, options]))
    np.testing.assert_allclose(np.asarray(scores[1]), np.asarray(logits[1, 2, options]))
    answer = jnp.argmax(scores, -1)
    assert float(vlm_lib.mc_accuracy(logits, loss_mask, options, answer)) == 1.0
    assert float(vlm_lib.mc_accuracy(logits, loss_mask, options, answer, valid=jnp.asarray([True, False]))) == 1.0
    # gradients flow to every parameter group
    def f(p):
        return vlm_lib.next_token_loss(tiny["module"].apply({"params": p}, tiny["ids"], tiny["mask"], tiny["frames"]),
                                       tiny["ids"], loss_mask)[0]
    g = jax.jit(jax.grad(f))(tiny["params"])
    for name in ("vision", "projector", "llm", "image_newline"):
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g[name]))
        assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g[name])) > 0, name


def test_generation_right_padded_batch_equals_rows_alone(tiny):
    module, p = tiny["module"], tiny["params"]
    prompt_ids = jnp.asarray([[1, 7, VID, 9], [1, VID, 12, 0]], jnp.int32)
    prompt_mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    gen = jax.jit(lambda p, i, m, f: vlm_lib.generate(module, {"params": p}, i, m, frames=f, max_new_tokens=6))
    both = gen(p, prompt_ids, prompt_mask, tiny["frames"])
    row1 = gen(p, prompt_ids[1:, :3], prompt_mask[1:, :3], tiny["frames"][1:])
    np.testing.assert_array_equal(np.asarray(both["ids"][1]), np.asarray(row1["ids"][0]))
    # the cached decode equals re-running the full sequence (greedy argmax at each step)
    seq = np.asarray(prompt_ids[:1])
    fwd = jax.jit(lambda p, i, f: module.apply({"params": p}, i, None, f))
    for t in range(4):
        full = fwd(p, jnp.asarray(seq), tiny["frames"][:1])
        nxt = int(jnp.argmax(full[0, -1]))
        assert nxt == int(both["ids"][0, t])
        seq = np.concatenate([seq, [[nxt]]], 1)


def test_generation_eos_and_temperature():
    cfg = C.TINY_LLM
    module = Qwen2LM(cfg)
    ids = jnp.asarray(np.random.RandomState(1).randint(1, cfg.vocab_size, (3, 5)))
    variables = module.init(jax.random.PRNGKey(3), ids)
    gen = jax.jit(lambda v, x, key, eos: llm_lib.generate(module, v, x, max_new_tokens=8, key=key, eos_id=eos,
                                                          pad_id=-1, temperature=1.0 if key is not None else 0.0),
                  static_argnums=(3,))
    greedy = gen(variables, ids, None, None)
    eos = int(greedy["ids"][0, 2])
    out = gen(variables, ids, None, eos)
    row = np.asarray(out["ids"][0])
    first = int(np.argmax(row == eos))
    assert first <= 2 and (row[first + 1:] == -1).all() and int(out["lengths"][0]) == first + 1
    s1 = gen(variables, ids, jax.random.PRNGKey(0), None)
    s2 = gen(variables, ids, jax.random.PRNGKey(0), None)
    s3 = gen(variables, ids, jax.random.PRNGKey(1), None)
    np.testing.assert_array_equal(np.asarray(s1["ids"]), np.asarray(s2["ids"]))
    assert not np.array_equal(np.asarray(s1["ids"]), np.asarray(s3["ids"]))
    with pytest.raises(ValueError, match="temperature"):
        llm_lib.generate(module, variables, ids, max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="PRNG key"):
        llm_lib.generate(module, variables, ids, max_new_tokens=2, temperature=0.7)


def test_bfloat16_config_runs_close_to_fp32(tiny):
    cfg16 = tiny["cfg"].with_dtype("bfloat16", "float32")
    out = jax.jit(VideoLLM(cfg16).apply)({"params": tiny["params"]}, tiny["ids"], tiny["mask"], tiny["frames"])
    ref = tiny["apply"](tiny["params"], tiny["ids"], tiny["mask"], tiny["frames"])
    assert out.dtype == jnp.float32
    err = float(jnp.abs(out - ref).max())
    assert err < 0.05 * float(jnp.abs(ref).max()), err


# ----------------------------------------------------------------------------- sharding
def test_every_parameter_has_logical_axis_names(tiny):
    boxed = jax.eval_shape(lambda: tiny["module"].init(jax.random.PRNGKey(0), tiny["ids"], tiny["mask"], tiny["frames"]))
    flat = jax.tree_util.tree_flatten_with_path(boxed["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    unnamed = [jax.tree_util.keystr(k) for k, v in flat if not isinstance(v, nn.LogicallyPartitioned)]
    assert not unnamed


def test_forward_on_8_device_mesh_matches_single_device(tiny):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), MESH_AXES)
    module = tiny["module"]
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tiny["ids"], tiny["mask"], tiny["frames"]))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, AXIS_RULES)["params"]
    params = jax.device_put(tiny["params"], shardings)
    # FSDP and TP are really in use
    spec = params["llm"]["layers_0"]["mlp"]["gate_proj"]["kernel"].sharding.spec
    assert tuple(spec) == ("fsdp", "tensor")
    batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    ids = jnp.concatenate([tiny["ids"]] * 2)
    mask = jnp.concatenate([tiny["mask"]] * 2)
    frames = jnp.concatenate([tiny["frames"]] * 2)

    @jax.jit
    def fwd(p, i, m, f):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(AXIS_RULES):
            return module.apply({"params": p}, i, m, f)

    out = fwd(params, jax.device_put(ids, batch_sh), jax.device_put(mask, batch_sh), jax.device_put(frames, batch_sh))
    ref = tiny["apply"](tiny["params"], ids, mask, frames)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    # the activation constraints took effect: logits split over batch and vocab
    assert out.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor")), out.ndim)


# ----------------------------------------------------------------------------- compressors inside the VLM
TD_CFG = (("iters", 5), ("n_init", 1), ("refine_iters", 1))


def test_token_dynamics_compressor_in_vlm(tiny):
    cfg = tiny["cfg"].replace(compressor="token_dynamics", budget=4, compressor_cfg=TD_CFG)
    module = VideoLLM(cfg)
    rngs = {"params": jax.random.PRNGKey(0), "compress": jax.random.PRNGKey(1)}
    init = jax.jit(lambda r: module.init_with_output(r, tiny["ids"], tiny["mask"], tiny["frames"], return_expanded=True))
    out, variables = init(rngs)
    assert "compressor" in variables["params"]         # the cross-dynamics attention's weights
    assert out.shape == (2, 6 - 1 + 4 + 1, C.TINY_LLM.vocab_size)
    assert np.isfinite(np.asarray(out)).all()


def test_td_compat_applied_to_base_and_map(tiny):
    from td_jax.models.td_compat import TDCompatAttention, TDCompatConfig, official_inputs
    compat = TDCompatConfig(query_dim=16, d_model=C.TINY_LLM.hidden_size, num_heads=4, dim_feedforward=32)
    cfg = tiny["cfg"].replace(compressor="base_only", budget=3, compressor_cfg=TD_CFG, td_compat=compat)
    module = VideoLLM(cfg)
    rngs = {"params": jax.random.PRNGKey(0), "compress": jax.random.PRNGKey(5)}
    # wiring, abstractly: base_only's base + map go through the compat module → max(T, K) slots + newline
    (slots, mask, aux), variables = jax.eval_shape(
        lambda: module.init_with_output(rngs, tiny["frames"], method=VideoLLM.visual_slots))
    T = tiny["frames"].shape[1]
    assert slots.shape == (2, max(T, 3) + 1, C.TINY_LLM.hidden_size) and mask.shape == slots.shape[:2]
    assert "td_compat" in variables["params"] and "dynamics_map" in aux
    # numbers: the VLM's compat step equals the module on the released code's inputs
    tc = TDCompatAttention(compat)
    rs = np.random.RandomState(0)
    dmap = jnp.asarray(rs.randint(0, 3, (2, 5, 4, 4)), jnp.int32)
    base = jnp.asarray(rs.randn(2, 3, C.TINY_LLM.hidden_size), jnp.float32)
    tc_params = tc.init(jax.random.PRNGKey(1), jnp.zeros((1, 5, 16)), base[:1])["params"]
    only = {"td_compat": tc_params, "image_newline": jnp.zeros(C.TINY_LLM.hidden_size)}
    got = module.apply({"params": only}, base, {"dynamics_map": dmap},
                       method=VideoLLM.apply_td_compat)
    q, mem = jax.vmap(official_inputs)(dmap, base)
    np.testing.assert_allclose(np.asarray(got), np.asarray(tc.apply({"params": tc_params}, q, mem)), atol=1e-6)
    assert got.shape == (2, 5, C.TINY_LLM.hidden_size)
    # a compressor without a map is refused with a clear message
    with pytest.raises(ValueError, match="dynamics_map"):
        jax.eval_shape(lambda: VideoLLM(cfg.replace(compressor="pool", budget=8, compressor_cfg=())).init(
            rngs, tiny["frames"], method=VideoLLM.visual_slots))


def test_remat_gives_the_same_loss_and_gradients():
    ids = jnp.asarray(np.random.RandomState(4).randint(1, C.TINY_LLM.vocab_size, (2, 7)))
    lm = Qwen2LM(C.TINY_LLM)
    params = lm.init(jax.random.PRNGKey(0), ids)["params"]
    remat = Qwen2LM(dataclasses.replace(C.TINY_LLM, remat=True))

    def loss(m):
        return jax.jit(jax.value_and_grad(lambda p: vlm_lib.next_token_loss(
            m.apply({"params": p}, ids), ids, jnp.ones(ids.shape))[0]))(params)

    (l0, g0), (l1, g1) = loss(lm), loss(remat)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), g0, g1)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        C.LLMConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=1, num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="mm_hidden_size"):
        C.TINY_VLM.replace(mm_hidden_size=48)
    with pytest.raises(ValueError, match="projector"):
        C.TINY_VLM.replace(projector="mlp3x")
    with pytest.raises(ValueError, match="unknown dtype"):
        C.TINY_VLM.with_dtype("float8")
    with pytest.raises(KeyError, match="known"):
        C.get_config("qwen9")


def test_llava_ov_0_5b_lowers_on_8_device_mesh_abstractly():
    """MaxText-style: the real-size model (bf16 compute) lowers with FSDP+TP shardings, no weights."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), MESH_AXES)
    cfg = C.LLAVA_OV_0_5B.replace(budget=2 * 196).with_dtype("bfloat16", "float32")
    module = VideoLLM(cfg)
    B, T, L = 4, 2, 32
    ids = jnp.zeros((B, L), jnp.int32).at[:, 3].set(cfg.video_token_id)
    frames = jax.ShapeDtypeStruct((B, T, 384, 384, 3), jnp.uint8)
    boxed = jax.eval_shape(lambda f: module.init(jax.random.PRNGKey(0), ids, None, f), frames)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, AXIS_RULES)["params"]
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed["params"]), shardings)
    assert tuple(params["llm"]["embed_tokens"]["embedding"].sharding.spec) == ("tensor", "fsdp")
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))

    def fwd(p, i, f):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(AXIS_RULES):
            return module.apply({"params": p}, i, None, f)

    lowered = jax.jit(fwd, in_shardings=(shardings, batch, batch)).lower(
        params, jax.ShapeDtypeStruct((B, L), jnp.int32), frames)
    out = lowered.out_info
    assert out.shape == (B, L, C.QWEN2_0_5B.vocab_size) and out.dtype == jnp.float32


def _video_llm(mode, compressor="none", budget=64, layers=2):
    from td_jax.models.configs import PatchEmbedConfig
    cfg = C.TINY_VLM.replace(vision=PatchEmbedConfig(patch_size=8, hidden_size=32), compressor=compressor,
                           budget=budget, projector_position="after", visual_attention=mode,
                           llm=dataclasses.replace(C.TINY_VLM.llm, num_layers=layers),
                           compressor_cfg=(("iters", 5), ("num_heads", 2)) if compressor != "none" else ())
    module = VideoLLM(cfg)
    B, L = 2, 12
    ids = np.full((B, L), 7, np.int32)
    ids[:, 0], ids[:, 1] = 2, cfg.video_token_id
    mask = np.ones((B, L), bool)
    mask[1, 9:] = False
    frames = np.random.default_rng(0).integers(0, 255, (B, 4, 32, 32, 3), np.uint8)
    rngs = {"params": jax.random.key(0), "compress": jax.random.key(1)}
    return module, module.init(rngs, ids, mask, frames), ids, mask, frames


@pytest.mark.parametrize("mode,compressor,budget", [("full", "none", 64), ("kv_only", "none", 64),
                                                    ("kv_only", "token_dynamics", 4)])
def test_option_scores_from_one_cached_prompt_equal_full_rows(mode, compressor, budget):
    """score_options decodes video + prompt once and the options against that cache: the same
    numbers as scoring each full row with sequence_logprob."""
    from td_jax.models.vlm import sequence_logprob

    module, v, ids, mask, frames = _video_llm(mode, compressor, budget)
    B, L = ids.shape
    n = 3
    oids, omask = np.repeat(ids[:, None], n, 1), np.repeat(mask[:, None], n, 1)
    oloss = np.zeros((B, n, L), np.float32)
    for i in range(n):            # option i: two answer tokens then the end of the row
        oids[:, i, 6:8], oloss[:, i, 6:8] = 10 + i, 1.0
        omask[:, i, 6:8], omask[:, i, 8:], oids[:, i, 8:] = True, False, 0
    rngs = {"compress": jax.random.key(3)}
    scores = module.apply(v, oids, omask, oloss, frames, method=VideoLLM.score_options, rngs=rngs)
    rows = np.stack([sequence_logprob(module.apply(v, oids[:, i], omask[:, i], frames, rngs=rngs), oids[:, i],
                                      oloss[:, i]) for i in range(n)], 1)
    np.testing.assert_allclose(np.asarray(scores), rows, atol=2e-5)


def test_kv_only_visual_memory():
    """Visual tokens as keys/values only: with one decoder layer nothing differs from full
    attention at the text positions (the visual positions' own outputs are all it drops);
    text before the video never sees it, text after it does; and memory of 64 tokens costs the
    decoder no positions (the expanded sequence is not built)."""
    full, vf, ids, mask, frames = _video_llm("full", layers=1)
    kv, vk, *_ = _video_llm("kv_only", layers=1)
    a = full.apply(vf, ids, mask, frames)
    b = kv.apply(vk, ids, mask, frames)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    kv2, v2, *_ = _video_llm("kv_only", layers=2)
    x = kv2.apply(v2, ids, mask, frames)
    y = kv2.apply(v2, ids, mask, frames[::-1])
    assert np.abs(np.asarray(x[:, 0] - y[:, 0])).max() == 0.0          # <bos>, before the video
    assert np.abs(np.asarray(x[:, 3] - y[:, 3])).max() > 1e-4          # after it
    d = kv2.apply(v2, ids, mask, frames, method=VideoLLM.decoder_inputs)
    assert d.embeds.shape[1] == ids.shape[1] and d.memory.x.shape[1] == 64 and d.kv_valid.shape[1] == 12 + 64
