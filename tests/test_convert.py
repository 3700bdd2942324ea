"""Parity with PyTorch / transformers on tiny random models the tests build and save.

Requires the ``[convert]`` extra (torch CPU + transformers); the library itself never
imports torch.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import procs
import pytest
import safetensors.numpy
import torch
import transformers

from td_jax.convert import load_hf, read_checkpoint
from td_jax.models import llm as llm_lib
from td_jax.models import vlm as vlm_lib
from td_jax.models.td_compat import TDCompatAttention, TDCompatConfig, official_inputs
from td_jax.models.vit import VisionTower

TOL = 1e-4
VIDEO_ID, IMAGE_ID = 101, 100


def _qwen_cfg(**kw):
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, rope_theta=10000.0)
    base.update(kw)
    return transformers.Qwen2Config(**base)


def _siglip_cfg():
    return transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, image_size=32, patch_size=8)


@pytest.fixture(scope="module")
def qwen_tied(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(_qwen_cfg(tie_word_embeddings=True)).eval()
    path = str(tmp_path_factory.mktemp("qwen_tied"))
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def qwen_untied_sharded(tmp_path_factory):
    torch.manual_seed(1)
    model = transformers.Qwen2ForCausalLM(_qwen_cfg(tie_word_embeddings=False)).eval()
    path = str(tmp_path_factory.mktemp("qwen_sharded"))
    model.save_pretrained(path, max_shard_size="40KB")
    return model, path


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    torch.manual_seed(2)
    model = transformers.SiglipVisionModel(_siglip_cfg()).eval()
    path = str(tmp_path_factory.mktemp("siglip"))
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    torch.manual_seed(3)
    cfg = transformers.LlavaOnevisionConfig(text_config=_qwen_cfg(tie_word_embeddings=True).to_dict(),
                                            vision_config=_siglip_cfg().to_dict(), image_token_index=IMAGE_ID,
                                            video_token_index=VIDEO_ID, vision_feature_layer=-2)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg).eval()
    path = str(tmp_path_factory.mktemp("llava"))
    model.save_pretrained(path)
    return model, path


def _video_prompt(rs, B, F, n_slots):
    """HF ids (placeholder repeated n_slots times) and ours (once), plus pixels."""
    pix = rs.randn(B, F, 3, 32, 32).astype(np.float32)
    pre, post = rs.randint(0, 99, (B, 3)), rs.randint(0, 99, (B, 4))
    hf_ids = np.concatenate([pre, np.full((B, n_slots), VIDEO_ID), post], 1)
    ids = np.concatenate([pre, np.full((B, 1), VIDEO_ID), post], 1)
    return pix, hf_ids, ids


# ----------------------------------------------------------------------------- Qwen2
def test_qwen2_logits_match_torch(qwen_tied):
    model, path = qwen_tied
    module, params = load_hf(path)
    assert module.cfg.tie_embeddings and "lm_head" not in params
    ids = np.random.RandomState(0).randint(0, 128, (2, 12))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    out = np.asarray(module.apply({"params": params}, jnp.asarray(ids)))
    assert out.shape == (2, 12, 128)
    assert np.abs(out - ref).max() <= TOL


def test_qwen2_sharded_untied_logits_match_torch(qwen_untied_sharded):
    model, path = qwen_untied_sharded
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    module, params = load_hf(path)
    assert not module.cfg.tie_embeddings and "lm_head" in params
    ids = np.random.RandomState(1).randint(0, 128, (3, 9))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()
    out = np.asarray(module.apply({"params": params}, jnp.asarray(ids)))
    assert np.abs(out - ref).max() <= TOL


def test_qwen2_greedy_generation_matches_transformers(qwen_tied):
    model, path = qwen_tied
    module, params = load_hf(path)
    ids = np.random.RandomState(2).randint(0, 128, (2, 10))
    with torch.no_grad():
        ref = model.generate(torch.tensor(ids), attention_mask=torch.ones(2, 10, dtype=torch.long),
                             do_sample=False, max_new_tokens=16, min_new_tokens=16)[:, 10:].numpy()
    gen = jax.jit(lambda p, x: llm_lib.generate(module, {"params": p}, x, max_new_tokens=16))
    out = gen(params, jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(out["ids"]), ref)
    np.testing.assert_array_equal(np.asarray(out["lengths"]), [16, 16])


def test_qwen2_bfloat16_load_close_to_fp32(qwen_tied):
    model, path = qwen_tied
    m32, p32 = load_hf(path)
    m16, p16 = load_hf(path, "bfloat16")
    assert jax.tree.leaves(p16)[0].dtype == jnp.bfloat16
    ids = jnp.asarray(np.random.RandomState(3).randint(0, 128, (1, 8)))
    a = np.asarray(m32.apply({"params": p32}, ids))
    b = np.asarray(m16.apply({"params": p16}, ids))
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


# ----------------------------------------------------------------------------- SigLIP
def test_siglip_hidden_state_and_pooler_match_torch(siglip):
    model, path = siglip
    module, params = load_hf(path)
    assert isinstance(module, VisionTower) and module.cfg.use_head
    x = np.random.RandomState(4).randn(2, 3, 32, 32).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.tensor(x), output_hidden_states=True)
    pixels = jnp.asarray(x.transpose(0, 2, 3, 1))
    out = module.apply({"params": params}, pixels)
    assert out.shape == (2, 16, 32)
    assert np.abs(np.asarray(out) - ref.last_hidden_state.numpy()).max() <= TOL
    pooled = module.apply({"params": params}, out, method=VisionTower.pooled)
    assert np.abs(np.asarray(pooled) - ref.pooler_output.numpy()).max() <= TOL
    # LLaVA's select_layer reads hidden_states[i] (no post-norm)
    for sel in (-2, 1, 0):
        mid = module.apply({"params": params}, pixels, select_layer=sel)
        assert np.abs(np.asarray(mid) - ref.hidden_states[sel].numpy()).max() <= TOL


# ----------------------------------------------------------------------------- LLaVA-OV
def test_llava_onevision_video_logits_match_torch_with_pool(llava):
    model, path = llava
    B, F = 2, 3
    n_slots = F * 4 + 1                       # 4x4 grid pooled to 2x2 per frame + newline
    module, params = load_hf(path, budget=F * 4)
    assert module.cfg.compressor == "pool" and module.cfg.select_layer == -2 and module.cfg.video_newline
    pix, hf_ids, ids = _video_prompt(np.random.RandomState(5), B, F, n_slots)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(hf_ids), pixel_values_videos=torch.tensor(pix)).logits.numpy()
    frames = jnp.asarray(pix.transpose(0, 1, 3, 4, 2))
    out = module.apply({"params": params}, jnp.asarray(ids), None, frames, return_expanded=True)
    assert out.shape == ref.shape
    assert np.abs(np.asarray(out) - ref).max() <= TOL
    # text-aligned logits are the expanded ones at the text positions
    aligned = np.asarray(module.apply({"params": params}, jnp.asarray(ids), None, frames))
    assert aligned.shape == (B, ids.shape[1], 128)
    np.testing.assert_allclose(aligned[:, :3], ref[:, :3], atol=TOL)
    np.testing.assert_allclose(aligned[:, 3], ref[:, 3 + n_slots - 1], atol=TOL)
    np.testing.assert_allclose(aligned[:, 4:], ref[:, 3 + n_slots:], atol=TOL)


def test_llava_onevision_greedy_generation_matches_transformers(llava):
    model, path = llava
    B, F = 2, 2
    module, params = load_hf(path, budget=F * 4)
    pix, hf_ids, ids = _video_prompt(np.random.RandomState(6), B, F, F * 4 + 1)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor(hf_ids), pixel_values_videos=torch.tensor(pix),
                             attention_mask=torch.ones(hf_ids.shape, dtype=torch.long),
                             do_sample=False, max_new_tokens=16, min_new_tokens=16)[:, hf_ids.shape[1]:].numpy()
    frames = jnp.asarray(pix.transpose(0, 1, 3, 4, 2))
    gen = jax.jit(lambda p, x, f: vlm_lib.generate(module, {"params": p}, x, frames=f, max_new_tokens=16))
    out = gen(params, jnp.asarray(ids), frames)
    np.testing.assert_array_equal(np.asarray(out["ids"]), ref)


def test_llava_onevision_none_compressor_matches_unpooled_torch(llava):
    """compressor="none" keeps all 16 tokens per frame: parity with torch without pooling."""
    model, path = llava
    B, F = 1, 2
    module, params = load_hf(path, compressor="none", budget=F * 16)
    pix, hf_ids, ids = _video_prompt(np.random.RandomState(7), B, F, F * 16 + 1)
    tm = model.model
    with torch.no_grad():
        hs = tm.vision_tower(torch.tensor(pix).flatten(0, 1), output_hidden_states=True).hidden_states[-2]
        feats = tm.multi_modal_projector(hs).reshape(B, -1, 64)
        feats = torch.cat([feats, tm.image_newline[None, None]], 1)
        emb = tm.language_model.embed_tokens(torch.tensor(hf_ids))
        emb[torch.tensor(hf_ids) == VIDEO_ID] = feats.reshape(-1, 64)
        ref = model(inputs_embeds=emb).logits.numpy()
    out = module.apply({"params": params}, jnp.asarray(ids), None, jnp.asarray(pix.transpose(0, 1, 3, 4, 2)),
                       return_expanded=True)
    assert np.abs(np.asarray(out) - ref).max() <= TOL


# ----------------------------------------------------------------------------- original layout + compat
def _torch_vqattn(query_dim, d_model, nhead, ff=2048):
    dec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(d_model=d_model, nhead=nhead,
                                                                       dim_feedforward=ff), num_layers=1)
    proj = torch.nn.Linear(query_dim, d_model)
    return torch.nn.ModuleDict({"transformer_decoder": dec, "to_q_proj": proj}).eval()


def _torch_official(mod, rows, base):
    """The released code's forward: tile the shorter side, project, decode (seq-first)."""
    if rows.shape[0] != base.shape[0]:
        if rows.shape[0] < base.shape[0]:
            rows = rows.repeat(base.shape[0] // rows.shape[0] + 1, 1)[:base.shape[0]]
        else:
            base = base.repeat(rows.shape[0] // base.shape[0] + 1, 1)[:rows.shape[0]]
    x = mod["to_q_proj"](rows[None]).permute(1, 0, 2)
    out = mod["transformer_decoder"](tgt=x, memory=base[None].permute(1, 0, 2))
    return out.permute(1, 0, 2)[0]


@pytest.mark.parametrize("T,K", [(6, 6), (4, 9), (10, 3)])
def test_td_compat_matches_torch_transformer_decoder(T, K):
    """Released sizes: 729 map cells → 896 wide, 8 heads, FFN 2048, post-norm ReLU; eval mode."""
    torch.manual_seed(T * 100 + K)
    tmod = _torch_vqattn(729, 896, 8)
    sd = {f"model.cross_attention.{k}": v.numpy() for k, v in tmod.state_dict().items()}
    from td_jax.convert import assemble, layouts
    cfg = TDCompatConfig()
    module = TDCompatAttention(cfg)
    abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 729)), jnp.zeros((1, 2, 896))))
    import flax.linen as nn
    params = assemble(layouts.td_compat("model.cross_attention.", (), 1), sd, nn.unbox(abstract["params"]),
                      jnp.float32, source="test")
    rs = np.random.RandomState(T + K)
    dmap = rs.randint(0, K, (T, 27, 27)).astype(np.int32)
    base = rs.randn(K, 896).astype(np.float32)
    with torch.no_grad():
        ref = _torch_official(tmod, torch.tensor(dmap.reshape(T, -1), dtype=torch.float32), torch.tensor(base)).numpy()
    q, mem = official_inputs(jnp.asarray(dmap), jnp.asarray(base))
    out = np.asarray(module.apply({"params": params}, q[None], mem[None]))[0]
    assert out.shape == (max(T, K), 896) == ref.shape
    assert np.abs(out - ref).max() <= 1e-5


@pytest.fixture(scope="module")
def llava_original(llava, tmp_path_factory):
    """The tiny llava model re-saved in the original LLaVA-NeXT layout, as LLaVA-NeXT's SigLIP
    wrapper stores it (last block and head dropped), plus a cross-attention."""
    model, _ = llava
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    out = {}
    n_vis = 3
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.vision_tower."):
            rest = k[len("model.vision_tower."):]
            if rest.startswith("head.") or rest.startswith(f"encoder.layers.{n_vis - 1}."):
                continue
            out["model.vision_tower.vision_tower.vision_model." + rest] = v
        elif k.startswith("model.multi_modal_projector.linear_1."):
            out["model.mm_projector.0." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("model.multi_modal_projector.linear_2."):
            out["model.mm_projector.2." + k.rsplit(".", 1)[1]] = v
        elif k == "model.image_newline":
            out["model.image_newline"] = v
        elif k == "lm_head.weight":
            continue                                   # tied
        else:
            raise AssertionError(f"unexpected key {k}")
    torch.manual_seed(9)
    compat = _torch_vqattn(16, 64, 8, ff=128)
    out.update({f"model.cross_attention.{k}": v.numpy() for k, v in compat.state_dict().items()})
    path = str(tmp_path_factory.mktemp("llava_original"))
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in out.items()},
                                os.path.join(path, "model.safetensors"))
    cfg = _qwen_cfg(tie_word_embeddings=True).to_dict()
    cfg.update(architectures=["LlavaQwenForCausalLM"], model_type="llava_qwen", mm_projector_type="mlp2x_gelu",
               mm_hidden_size=32, mm_vision_select_layer=-2, mm_vision_tower="tiny-siglip",
               vision_config=_siglip_cfg().to_dict(), video_token_id=VIDEO_ID)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return model, compat, path


def test_llava_original_layout_matches_torch(llava_original):
    model, compat, path = llava_original
    module, params = load_hf(path, budget=2 * 4)
    assert module.cfg.vision.num_layers == 2 and module.cfg.select_layer == 2
    assert module.cfg.td_compat is not None and not module.cfg.td_compat_apply
    pix, hf_ids, ids = _video_prompt(np.random.RandomState(8), 1, 2, 2 * 4 + 1)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(hf_ids), pixel_values_videos=torch.tensor(pix)).logits.numpy()
    out = module.apply({"params": params}, jnp.asarray(ids), None, jnp.asarray(pix.transpose(0, 1, 3, 4, 2)),
                       return_expanded=True)
    assert np.abs(np.asarray(out) - ref).max() <= TOL
    # the cross-attention weights loaded into the compat module reproduce torch
    rs = np.random.RandomState(10)
    dmap, base = rs.randint(0, 5, (3, 4, 4)).astype(np.int32), rs.randn(5, 64).astype(np.float32)
    with torch.no_grad():
        ref_c = _torch_official(compat, torch.tensor(dmap.reshape(3, -1), dtype=torch.float32), torch.tensor(base)).numpy()
    q, mem = official_inputs(jnp.asarray(dmap), jnp.asarray(base))
    got = TDCompatAttention(module.cfg.td_compat).apply({"params": params["td_compat"]}, q[None], mem[None])
    assert np.abs(np.asarray(got)[0] - ref_c).max() <= 1e-5


def test_custom_cross_attention_prefix(llava_original, tmp_path):
    _, _, path = llava_original
    tensors = read_checkpoint(path)
    renamed = {k.replace("model.cross_attention.", "model.vq_attn."): np.ascontiguousarray(v) for k, v in tensors.items()}
    safetensors.numpy.save_file(renamed, str(tmp_path / "model.safetensors"))
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="unknown checkpoint keys"):
        load_hf(str(tmp_path), budget=8)
    module, params = load_hf(str(tmp_path), budget=8, cross_attention_prefix="model.vq_attn.")
    assert "td_compat" in params


# ----------------------------------------------------------------------------- errors
def test_bad_checkpoints_raise_listing_the_problem(qwen_tied, tmp_path):
    _, path = qwen_tied
    tensors = {k: np.ascontiguousarray(v) for k, v in read_checkpoint(path).items()}
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cfg, f)
    # an unknown key and a missing one
    bad = dict(tensors)
    bad["model.extra.weight"] = np.zeros(3, np.float32)
    del bad["model.norm.weight"]
    safetensors.numpy.save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"(?s)unknown checkpoint keys.*model\.extra\.weight.*missing.*model\.norm\.weight"):
        load_hf(str(tmp_path))
    # a shape mismatch
    bad = dict(tensors)
    bad["model.layers.0.mlp.up_proj.weight"] = np.zeros((95, 64), np.float32)
    safetensors.numpy.save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatches.*up_proj"):
        load_hf(str(tmp_path))
    # pickle weights are refused
    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle"):
        load_hf(str(tmp_path))


# ----------------------------------------------------------------------------- CLI
def test_convert_cli_writes_orbax_checkpoint_that_reloads(llava, tmp_path):
    import subprocess
    import sys
    from td_jax.convert.checkpoint import load_converted
    _, path = llava
    out = tmp_path / "ckpt"
    env = procs.env(None)
    res = subprocess.run([sys.executable, "-m", "launch.convert", f"--hf_dir={path}", f"--out={out}", "--budget=8"],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "VideoLLM" in res.stdout
    module, params = load_converted(str(out))
    ref_module, ref_params = load_hf(path, budget=8)
    assert module.cfg == ref_module.cfg
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, ref_params)
    # refuses to overwrite silently
    res = subprocess.run([sys.executable, "-m", "launch.convert", f"--hf_dir={path}", f"--out={out}", "--budget=8"],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "already exists" in res.stderr


def test_bfloat16_safetensors_load_exactly(qwen_tied, tmp_path):
    """Released checkpoints are bf16: the reader decodes BF16 without torch."""
    model, _ = qwen_tied
    import copy
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m16.save_pretrained(str(tmp_path))
    module, params = load_hf(str(tmp_path), "float32")
    want = m16.model.layers[0].mlp.up_proj.weight.detach().float().numpy().T
    np.testing.assert_array_equal(np.asarray(params["layers_0"]["mlp"]["up_proj"]["kernel"]), want)
    _, p16 = load_hf(str(tmp_path), "bfloat16")
    assert p16["embed_tokens"]["embedding"].dtype == jnp.bfloat16
