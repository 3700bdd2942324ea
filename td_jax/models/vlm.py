"""VideoLLM: frames → vision tower → projector → compressor → spliced into text → decoder.

Batch conventions (shared with data/ and train/):

* ``input_ids [B, L] int32`` right-padded, exactly one ``video_token_id`` per row;
* ``attention_mask [B, L] bool`` real text tokens;
* ``frames [B, T, R, R, 3]`` uint8 (or float, already normalised) **or**
  ``visual_tokens [B, T, h, w, Dv]`` precomputed tower features (``visual_tokens_stage=
  "vision"``) / ``[B, T, h, w, D]`` projected features (``"projected"``);
* ``loss_mask [B, L] float32`` 1.0 on target tokens.

The placeholder is replaced by the compressor's M slots (+ one learned newline when
``video_newline``): S = M (+1) visual slots, so the decoder runs on E = L - 1 + S
positions.  Masked slots (``Compressed.mask`` False) are excluded from attention and take
no RoPE position.  ``__call__`` returns logits aligned with ``input_ids`` (``[B, L, V]``;
``logits[:, i]`` predicts ``input_ids[:, i + 1]``; at the placeholder it is the logit
after the last visual slot), or the expanded ``[B, E, V]`` with ``return_expanded=True``.
"""
from __future__ import annotations


import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from td_jax import compressors
from td_jax.models import llm as llm_lib
from td_jax.data.patch_embed import patch_embed
from td_jax.models.configs import PatchEmbedConfig, VisionConfig, VLMConfig, as_dtype
from td_jax.models.llm import Qwen2LM
from td_jax.models.td_compat import TDCompatAttention, official_inputs
from td_jax.models.vit import Projector, VisionTower

Array = jax.Array


def compressor_for(cfg: VLMConfig) -> compressors.Compressor:
    """The configured compressor (``td_jax.compressors`` registers every method on import)."""
    return compressors.get(cfg.compressor, **cfg.compressor_kwargs)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_placeholders(input_ids, video_token_id: int) -> None:
    """ValueError unless every row of ``input_ids [B, L]`` holds exactly one placeholder.

    Only checks concrete arrays (inside ``jit`` the shapes are all that can be checked).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if _is_concrete(input_ids):
        counts = np.sum(np.asarray(input_ids) == video_token_id, axis=1)
        bad = np.nonzero(counts != 1)[0]
        if bad.size:
            raise ValueError(f"each row of input_ids needs exactly one video_token_id={video_token_id}; "
                             f"rows {bad.tolist()[:8]} have counts {counts[bad].tolist()[:8]}")


def check_frames(frames, resolution: int | None, multiple_of: int = 1) -> None:
    """ValueError naming the shape the caller passed unless ``frames`` is ``[B, T, R, R, 3]``
    with ``R = resolution`` (None: any R that is a multiple of ``multiple_of``; images are
    1-frame videos: ``[B, 1, R, R, 3]``)."""
    shape = tuple(frames.shape)
    r = "R" if resolution is None else resolution
    want = f"[B, T, {r}, {r}, 3] (batch, frames, height, width, RGB)"
    if len(shape) == 4 and shape[-1] == 3:
        raise ValueError(f"frames must be {want}, got shape {shape}: an image batch? pass it as 1-frame videos, "
                         f"frames[:, None]")
    if len(shape) != 5:
        raise ValueError(f"frames must be {want}, got shape {shape}")
    if shape[2] == 3 and shape[-1] != 3:
        raise ValueError(f"frames must be {want}, got shape {shape}: channels-first? move the channel axis last, "
                         f"frames.transpose(0, 1, 3, 4, 2)")
    if resolution is None:
        if shape[2] != shape[3] or shape[2] % multiple_of:
            raise ValueError(f"frames must be {want} with R a multiple of the patch size {multiple_of}, got shape "
                             f"{shape}")
    elif shape[2:] != (resolution, resolution, 3):
        raise ValueError(f"frames must be {want}, got shape {shape}: resize the frames to {resolution}x{resolution} "
                         f"(the vision tower's image_size)")


def _check_frames_for(frames, vision) -> None:
    """:func:`check_frames` for a tower: a ViT's image_size, a patch embedding's patch multiple."""
    if isinstance(vision, PatchEmbedConfig):
        check_frames(frames, None, vision.patch_size)
    else:
        check_frames(frames, vision.image_size)


def splice(text: Array, text_valid: Array, placeholder: Array, vis: Array, vis_valid: Array) -> tuple[Array, Array]:
    """Replace each row's placeholder by its visual slots.

    text [B, L, D], text_valid [B, L], placeholder [B] int, vis [B, S, D], vis_valid [B, S]
    → embeds [B, L - 1 + S, D], valid [B, L - 1 + S].
    """
    B, L, _ = text.shape
    S = vis.shape[1]
    j = jnp.arange(L - 1 + S)[None, :]
    p = placeholder[:, None]
    is_vis = (j >= p) & (j < p + S)
    t_idx = jnp.clip(jnp.where(j < p, j, j - S + 1), 0, L - 1)
    v_idx = jnp.clip(j - p, 0, S - 1)
    take = lambda a, idx: jnp.take_along_axis(a, idx[..., None] if a.ndim == 3 else idx, axis=1)
    emb = jnp.where(is_vis[..., None], take(vis, v_idx).astype(text.dtype), take(text, t_idx))
    valid = jnp.where(is_vis, take(vis_valid, v_idx), take(text_valid, t_idx))
    return emb, valid


def text_positions(placeholder: Array, L: int, S: int) -> Array:
    """Expanded index [B, L] of each text position (the placeholder maps to the last slot)."""
    i = jnp.arange(L)[None, :]
    p = placeholder[:, None]
    return jnp.where(i < p, i, i + S - 1)


@flax.struct.dataclass
class DecoderInputs:
    """What the decoder runs on for one batch (see :meth:`VideoLLM.decoder_inputs`).

    embeds [B, S, D] / valid [B, S]: the sequence the layers compute hidden states for (text
    with the visual slots spliced in, or — ``visual_attention="kv_only"`` — text only);
    positions / slots [B, S]: RoPE positions and key/value slots; kv_valid [B, C]: which of
    the C key/value slots may be attended; memory: the key/value-only visual tokens or None;
    text_index [B, L]: index into S of each text position (for text-aligned logits).
    """

    embeds: Array
    valid: Array
    positions: Array
    slots: Array
    kv_valid: Array
    memory: llm_lib.Memory | None
    text_index: Array


def memory_layout(text_valid: Array, placeholder: Array, mem_valid: Array) -> tuple[Array, ...]:
    """Slots and positions of text around key/value-only memory at each row's placeholder.

    text_valid [B, L], placeholder [B] int, mem_valid [B, M] → (text_slots [B, L],
    text_positions [B, L], mem_slots [B, M], mem_positions [B, M], kv_valid [B, L + M]).
    The M memory slots sit just before the placeholder's token (which stays a text token,
    e.g. the video newline), so text before the placeholder cannot see the video and every
    token from the placeholder on can; RoPE positions count valid slots in that order.
    """
    B, L = text_valid.shape
    M = mem_valid.shape[1]
    i = jnp.arange(L)[None]
    p = placeholder[:, None]
    text_slots = jnp.where(i < p, i, i + M)
    mem_slots = p + jnp.arange(M)[None]
    b = jnp.arange(B)[:, None]
    kv_valid = jnp.zeros((B, L + M), bool).at[b, text_slots].set(text_valid).at[b, mem_slots].set(mem_valid)
    order_pos = jnp.maximum(jnp.cumsum(kv_valid, axis=1) - 1, 0)
    return (text_slots, jnp.take_along_axis(order_pos, text_slots, axis=1), mem_slots,
            jnp.take_along_axis(order_pos, mem_slots, axis=1), kv_valid)


class VideoLLM(nn.Module):
    """LLaVA-OneVision-style video LLM with a pluggable compressor (see module docstring)."""

    cfg: VLMConfig

    def setup(self):
        cfg = self.cfg
        if isinstance(cfg.vision, VisionConfig):
            self.vision = VisionTower(cfg.vision)
        self.projector = Projector(cfg.llm.hidden_size, kind=cfg.projector, use_bias=cfg.projector_bias,
                                   act=cfg.projector_act, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.compressor = compressor_for(cfg).module(cfg.budget)
        self.llm = Qwen2LM(cfg.llm)
        if cfg.td_compat is not None:
            self.td_compat = TDCompatAttention(cfg.td_compat)
        if cfg.video_newline:
            self.image_newline = self.param(
                "image_newline", nn.with_logical_partitioning(nn.initializers.normal(cfg.llm.hidden_size ** -0.5), ("embed",)),
                (cfg.llm.hidden_size,), as_dtype(cfg.param_dtype))

    # ------------------------------------------------------------------ vision side
    def encode_video(self, frames: Array | None = None, visual_tokens: Array | None = None) -> Array:
        """Visual tokens ``[B, T, h, w, Dc]`` from frames or precomputed tokens, ready for the
        compressor: projected (Dc = D) with ``projector_position="before"``, else tower features."""
        cfg = self.cfg
        if (frames is None) == (visual_tokens is None):
            raise ValueError("pass exactly one of frames [B,T,R,R,3] or visual_tokens [B,T,h,w,D]")
        if frames is not None:
            if cfg.vision is None:
                raise ValueError("this VLMConfig has no vision tower: pass visual_tokens instead of frames")
            _check_frames_for(frames, cfg.vision)
            B, T = frames.shape[:2]
            if isinstance(cfg.vision, PatchEmbedConfig):    # frozen: nothing to train or differentiate
                feats = jax.lax.stop_gradient(patch_embed(frames, **cfg.vision.kwargs()))
            else:
                x = frames.reshape((B * T,) + frames.shape[2:])
                if x.dtype == jnp.uint8:
                    mean = jnp.asarray(cfg.pixel_mean, jnp.float32)
                    std = jnp.asarray(cfg.pixel_std, jnp.float32)
                    x = (x.astype(jnp.float32) / 255.0 - mean) / std
                feats = self.vision(x, select_layer=cfg.select_layer)            # [B*T, N, Dv]
                g = cfg.vision.grid
                feats = feats.reshape(B, T, g, g, feats.shape[-1])
            stage = "vision"
        else:
            if visual_tokens.ndim != 5:
                raise ValueError(f"visual_tokens must be [B, T, h, w, D], got shape {tuple(visual_tokens.shape)}")
            feats, stage = visual_tokens, cfg.visual_tokens_stage
        want = cfg.vision_width if stage == "vision" else cfg.llm.hidden_size
        if feats.shape[-1] != want:
            raise ValueError(f"visual tokens ({stage} stage) must have width {want}, got shape {tuple(feats.shape)}")
        if stage == "vision" and cfg.projector_position == "before":
            feats = self.projector(feats)
        return feats.astype(as_dtype(cfg.dtype))

    def _precomputed_ok(self) -> None:
        if self.cfg.visual_tokens_stage == "vision" and self.cfg.projector_position != "after":
            raise ValueError("a precomputed compressor stage on vision-stage tokens needs projector_position='after' "
                             "(the projector then maps the compressed tokens)")

    def visual_slots(self, frames=None, visual_tokens=None, deterministic: bool = True,
                     precomputed: dict | None = None) -> tuple[Array, Array, dict]:
        """(slots [B, S, D], mask [B, S], compressor aux) ready to splice.

        ``precomputed``: the compressor's parameter-free stage already run per video
        (``CompressorModule.precompute``, e.g. read from a token store); only its learned
        stage runs here.
        """
        cfg = self.cfg
        if precomputed is not None:
            if frames is not None or visual_tokens is not None:
                raise ValueError("pass precomputed compressor outputs or frames / visual_tokens, not both")
            self._precomputed_ok()
            out = self.compressor.apply_precomputed(precomputed, deterministic=deterministic)
        else:
            out = self.compressor(self.encode_video(frames, visual_tokens), deterministic=deterministic)
        if out.tokens.ndim != 3 or out.tokens.shape[1] != cfg.budget:
            raise ValueError(f"compressor {cfg.compressor!r} returned tokens {tuple(out.tokens.shape)}, "
                             f"expected [B, {cfg.budget}, D]")
        slots, mask = out.tokens.astype(as_dtype(cfg.dtype)), out.mask.astype(bool)
        if cfg.projector_position == "after" and (precomputed is None or cfg.visual_tokens_stage == "vision"):
            slots = jnp.where(mask[..., None], self.projector(slots), 0).astype(as_dtype(cfg.dtype))
        if cfg.td_compat is not None:
            if cfg.td_compat_apply:
                slots = self.apply_td_compat(slots, out.aux, deterministic)
                mask = jnp.ones(slots.shape[:2], bool)
            elif self.is_initializing():      # create its parameters; it is not applied
                q = jnp.zeros((slots.shape[0], 1, cfg.td_compat.query_dim), jnp.float32)
                self.td_compat(q, slots[:, :1], deterministic)
        if cfg.video_newline:
            B, _, D = slots.shape
            nl = jnp.broadcast_to(self.image_newline.astype(slots.dtype), (B, 1, D))
            slots = jnp.concatenate([slots, nl], axis=1)
            mask = jnp.concatenate([mask, jnp.ones((B, 1), bool)], axis=1)
        # [B] real visual tokens each example feeds the decoder (the newline not counted), kept
        # only when the caller asks (apply(..., mutable=["intermediates"])): no second pass to count
        self.sow("intermediates", "visual_tokens", jnp.sum(mask, axis=1, dtype=jnp.int32) - int(cfg.video_newline))
        return slots, mask, out.aux

    def apply_td_compat(self, base: Array, aux: dict, deterministic: bool = True) -> Array:
        """The released checkpoint's cross-attention: base [B, K, D] + aux["dynamics_map"]
        [B, T, H, W] → [B, max(T, K), D] (see ``td_jax.models.td_compat``)."""
        if "dynamics_map" not in aux:
            raise ValueError(f"td_compat needs a compressor that returns aux['dynamics_map'] "
                             f"(e.g. token_dynamics / base_only); {self.cfg.compressor!r} gave {sorted(aux)}")
        q, mem = jax.vmap(official_inputs)(aux["dynamics_map"], base)
        return self.td_compat(q, mem, deterministic).astype(base.dtype)

    # ------------------------------------------------------------------ text side
    def _text(self, input_ids, attention_mask):
        check_placeholders(input_ids, self.cfg.video_token_id)
        B, L = input_ids.shape
        text_valid = jnp.ones((B, L), bool) if attention_mask is None else attention_mask.astype(bool)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
        placeholder = jnp.argmax(input_ids == self.cfg.video_token_id, axis=1)
        text = self.llm.embed(jnp.where(input_ids == self.cfg.video_token_id, 0, input_ids))
        return text, text_valid, placeholder

    def prompt_embeds(self, input_ids, attention_mask=None, frames=None, visual_tokens=None,
                      deterministic: bool = True, precomputed: dict | None = None) -> tuple[Array, Array, Array]:
        """(embeds [B, E, D], valid [B, E], placeholder [B]) with the video spliced in
        (``visual_attention="full"``; see :meth:`decoder_inputs` for either mode)."""
        if self.cfg.visual_attention != "full":
            raise ValueError("prompt_embeds splices the video into the text; with visual_attention="
                             f"{self.cfg.visual_attention!r} use decoder_inputs")
        text, text_valid, placeholder = self._text(input_ids, attention_mask)
        slots, mask, _ = self.visual_slots(frames, visual_tokens, deterministic, precomputed)
        if slots.shape[0] != input_ids.shape[0]:
            raise ValueError(f"video batch {slots.shape[0]} != text batch {input_ids.shape[0]}")
        emb, valid = splice(text, text_valid, placeholder, slots, mask)
        return emb, valid, placeholder

    def decoder_inputs(self, input_ids, attention_mask=None, frames=None, visual_tokens=None,
                       deterministic: bool = True, precomputed: dict | None = None) -> DecoderInputs:
        """The decoder's inputs for either ``visual_attention`` mode (:class:`DecoderInputs`)."""
        if self.cfg.visual_attention == "full":
            emb, valid, placeholder = self.prompt_embeds(input_ids, attention_mask, frames, visual_tokens,
                                                         deterministic, precomputed)
            B, E, _ = emb.shape
            L = input_ids.shape[1]
            return DecoderInputs(embeds=emb, valid=valid, positions=jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0),
                                 slots=jnp.broadcast_to(jnp.arange(E), (B, E)), kv_valid=valid, memory=None,
                                 text_index=text_positions(placeholder, L, E - L + 1))
        text, text_valid, placeholder = self._text(input_ids, attention_mask)
        slots, mask, _ = self.visual_slots(frames, visual_tokens, deterministic, precomputed)
        B, L = input_ids.shape
        if slots.shape[0] != B:
            raise ValueError(f"video batch {slots.shape[0]} != text batch {B}")
        if self.cfg.video_newline:   # the newline stays a decoder token, in the placeholder's place
            at = (jnp.arange(L)[None] == placeholder[:, None])[..., None]
            text = jnp.where(at, slots[:, -1:].astype(text.dtype), text)
            slots, mask = slots[:, :-1], mask[:, :-1]
        t_slots, t_pos, m_slots, m_pos, kv_valid = memory_layout(text_valid, placeholder, mask)
        return DecoderInputs(embeds=text, valid=text_valid, positions=t_pos, slots=t_slots, kv_valid=kv_valid,
                             memory=llm_lib.Memory(x=slots.astype(text.dtype), positions=m_pos, slots=m_slots),
                             text_index=jnp.broadcast_to(jnp.arange(L), (B, L)))

    def __call__(self, input_ids, attention_mask=None, frames=None, visual_tokens=None,
                 deterministic: bool = True, return_expanded: bool = False, precomputed: dict | None = None) -> Array:
        """Text-aligned logits ``[B, L, V]`` (or, ``return_expanded`` in "full" mode, one per
        decoder position ``[B, E, V]``)."""
        d = self.decoder_inputs(input_ids, attention_mask, frames, visual_tokens, deterministic, precomputed)
        h, _ = self.llm.decode(d.embeds, d.positions, d.slots, d.kv_valid, memory=d.memory)
        if not return_expanded:
            h = jnp.take_along_axis(h, d.text_index[..., None], axis=1)
        return self.llm.logits(h)

    def score_options(self, opt_input_ids, opt_attention_mask, opt_loss_mask, frames=None, visual_tokens=None,
                      precomputed: dict | None = None, deterministic: bool = True) -> Array:
        """Every option's answer log-likelihood ``[B, n]``, the video + prompt decoded once.

        ``opt_input_ids / opt_attention_mask / opt_loss_mask [B, n, L]``: the same prompt
        then option i's answer tokens (loss 1.0 on them), as ``td_jax.data.tokenizer.
        encode_mc_options`` makes them.  The prompt (with the video) runs through the decoder
        once into a KV cache; each option's answer tokens then attend to it, so the result
        equals :func:`sequence_logprob` on the n full rows at 1/n of the prompt's cost.  A row
        without answer tokens (a padded option slot) scores 0, above every real option: the
        caller restricts the argmax to the example's own options (``VideoQATask.eval_fn``).
        """
        ids = opt_input_ids
        B, n, L = ids.shape
        loss = opt_loss_mask > 0
        prompt_valid = opt_attention_mask.astype(bool)[:, 0] & ~loss[:, 0]               # [B, L]
        d = self.decoder_inputs(ids[:, 0], prompt_valid, frames, visual_tokens, deterministic, precomputed)
        C = d.kv_valid.shape[1]
        cache = llm_lib.init_cache(self.cfg.llm, B, C + L)
        kv_valid = jnp.concatenate([d.kv_valid, jnp.zeros((B, L), bool)], axis=1)
        h, layers = self.llm.decode(d.embeds, d.positions, d.slots, kv_valid, cache.layers, d.memory)
        b = jnp.arange(B)
        last = jnp.max(jnp.where(d.valid, jnp.arange(d.valid.shape[1])[None], -1), axis=1)
        first_logits = self.llm.logits(h[b, last][:, None])                              # [B, 1, V]
        next_pos = d.positions[b, last] + 1                                               # [B]
        start = jnp.argmax(loss, axis=-1)                                                 # [B, n]
        win = start[..., None] + jnp.arange(L)                                            # [B, n, L]
        idx = jnp.clip(win, 0, L - 1)
        ans = jnp.take_along_axis(ids, idx, axis=-1)
        ans_ok = jnp.take_along_axis(loss, idx, axis=-1) & (win < L)
        rep = lambda x: jnp.repeat(x, n, axis=0)  # noqa: E731  [B, ...] -> [B*n, ...]
        layers = tuple((rep(k), rep(v)) for k, v in layers)
        ans, ans_ok = ans.reshape(B * n, L), ans_ok.reshape(B * n, L)
        kv_ans = jnp.concatenate([rep(d.kv_valid), ans_ok], axis=1)
        h2, _ = self.llm.decode(self.llm.embed(ans), rep(next_pos)[:, None] + jnp.arange(L),
                                jnp.broadcast_to(C + jnp.arange(L), (B * n, L)), kv_ans, layers)
        logits = jnp.concatenate([rep(first_logits), self.llm.logits(h2[:, :-1])], axis=1)  # predicts ans[:, t]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        tok = jnp.take_along_axis(lp, ans[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(ans_ok, tok, 0.0), axis=1).reshape(B, n)


# ---------------------------------------------------------------------- losses / scoring
def next_token_loss(logits: Array, input_ids: Array, loss_mask: Array) -> tuple[Array, dict]:
    """Mean next-token cross-entropy over ``loss_mask[:, 1:]``.

    logits [B, L, V] (text-aligned), input_ids [B, L], loss_mask [B, L] → (loss, metrics).
    """
    if logits.shape[:2] != input_ids.shape or loss_mask.shape != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and loss_mask "
                         f"{tuple(loss_mask.shape)} must agree on [B, L]")
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tgt = input_ids[:, 1:]
    nll = -jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
    w = loss_mask[:, 1:].astype(jnp.float32)
    n = jnp.sum(w)
    loss = jnp.sum(nll * w) / jnp.maximum(n, 1.0)
    acc = jnp.sum((jnp.argmax(lp, -1) == tgt) * w) / jnp.maximum(n, 1.0)
    return loss, {"loss": loss, "token_accuracy": acc, "num_target_tokens": n}


def mc_logits(logits: Array, loss_mask: Array, option_ids: Array) -> Array:
    """Multiple-choice scores [B, n_options]: the option letters' logits at the position
    before each row's first target token (the answer letter).  logits [B, L, V]."""
    first = jnp.argmax(loss_mask > 0, axis=1)
    at = jnp.take_along_axis(logits, jnp.maximum(first - 1, 0)[:, None, None], axis=1)[:, 0]
    return at[:, option_ids]


def sequence_logprob(logits: Array, input_ids: Array, loss_mask: Array) -> Array:
    """Sum of the target tokens' log-probabilities per row: ``[B]``.  logits [B, L, V]
    (text-aligned), input_ids [B, L], loss_mask [B, L] (1.0 on the tokens to score).
    With rows = one example's options (``encode_mc_options``), argmax over them is the
    likelihood-scored multiple-choice answer."""
    lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok_lp = jnp.take_along_axis(lp, input_ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(tok_lp * loss_mask[:, 1:].astype(jnp.float32), axis=1)


def mc_accuracy(logits, loss_mask, option_ids, answer, valid=None) -> Array:
    """Fraction of (valid) rows whose argmax option equals ``answer [B]``."""
    hit = (jnp.argmax(mc_logits(logits, loss_mask, option_ids), axis=-1) == answer).astype(jnp.float32)
    w = jnp.ones_like(hit) if valid is None else valid.astype(jnp.float32)
    return jnp.sum(hit * w) / jnp.maximum(jnp.sum(w), 1.0)


def _generate(module: VideoLLM, variables, input_ids, attention_mask, frames, visual_tokens, precomputed, key,
              compress_key, *, max_new_tokens: int, temperature: float, eos_id: int | None, pad_id: int) -> dict:
    rngs = {} if compress_key is None else {compressors.RNG_STREAM: compress_key}
    d = module.apply(variables, input_ids, attention_mask, frames, visual_tokens, precomputed=precomputed,
                     method=VideoLLM.decoder_inputs, rngs=rngs)
    layout = None if d.memory is None else (d.positions, d.slots, d.kv_valid)
    return llm_lib.generate_from_embeds(module, variables, d.embeds, d.valid, max_new_tokens=max_new_tokens, key=key,
                                        temperature=temperature, eos_id=eos_id, pad_id=pad_id, layout=layout,
                                        memory=d.memory)


# One compiled program per (model, decoding settings, input shapes); reused across calls.
_generate_jit = jax.jit(_generate, static_argnames=("module", "max_new_tokens", "temperature", "eos_id", "pad_id"))


def generate(module: VideoLLM, variables, input_ids, attention_mask=None, *, frames=None, visual_tokens=None,
             precomputed: dict | None = None, max_new_tokens: int, key=None, temperature: float = 0.0,
             eos_id: int | None = None,
             pad_id: int | None = None, compress_key=None) -> dict:
    """Batched greedy / temperature generation after a right-padded prompt with one video.

    Returns ``{"ids": [B, max_new_tokens], "lengths": [B]}`` (see
    ``td_jax.models.llm.generate_from_embeds``).  Compiled with ``jax.jit`` (cached per model,
    decoding settings and input shapes); inside a caller's own ``jit`` it simply traces.
    ``compress_key``: the PRNG key of the compressor's randomness (k-means seeding), required
    by compressors that draw any.  ``precomputed``: a stored compressor stage instead of media.
    """
    check_placeholders(input_ids, module.cfg.video_token_id)
    if frames is not None and _is_concrete(frames) and module.cfg.vision is not None:
        _check_frames_for(frames, module.cfg.vision)
    pad = module.cfg.pad_id if pad_id is None else pad_id
    return _generate_jit(module, variables, input_ids, attention_mask, frames, visual_tokens, precomputed, key,
                         compress_key, max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                         eos_id=None if eos_id is None else int(eos_id), pad_id=int(pad))
