"""``video_qa``: a VideoLLM (vision → projector → compressor → decoder) on multiple-choice video QA.

Loss: next-token cross-entropy on the answer tokens (``loss_mask``). Eval: multiple-choice
accuracy per question family — the argmax over the option letters' logits at the answer
position (``data.answer_format="letter"``), or over each option's text log-likelihood with
the video + prompt decoded once (``"text"``, ``VideoLLM.score_options``) — plus every
example's prediction (``per_example/*``). Data: the Grain pipeline of
``td_jax.data.pipeline`` (TFDS ``moving_shapes_qa``, video folders, stores of tower tokens
or of a compressor's precomputed stage) configured by ``config.task.data``; ``batch_size``
and ``seed`` come from the top-level config.

Config (``config.task``)::

    model            the architecture: a td_jax.models.configs name ("tiny_vlm", "llava_ov_0_5b", ...),
                     a Hugging Face directory, a launch.convert output directory or a model.json;
                     "" = init_from's architecture ("tiny_vlm" without init_from); then overrides:
    llm              decoder sizes (0 / None keep the named config's)
    vision           "named" (its tower) | "patch" (a frozen patch embedding, ``patch``) | "none"
    projector, projector_position, visual_attention, visual_tokens_stage, mm_hidden_size
                     VLMConfig fields ("" / 0 keep the named config's)
    compressor       compressor name ("" keeps the model config's), budget (0 keeps it; ``pool`` and
                     ``none`` then keep every pooled cell / token of data.num_frames frames)
    compressor_cfg   JSON object of compressor fields, e.g. '{"iters": 10}'
    init_from        weights to start from: a Hugging Face directory or a launch.convert output
                     ("" = random init); parameters the checkpoint lacks (a learned compressor's)
                     are freshly initialised, anything else that differs is an error naming the paths
    resize_vocab     from-scratch models: size the vocabulary to the tokenizer's
    remat            rematerialise each vision / decoder layer in the backward pass
    prepare_data     build the TFDS dataset if it is not there yet
    data             td_jax.data.pipeline options (source, tfds_name, data_dir, ...)

With ``data.source="tokens"`` and a compressed store (``launch/extract_tokens.py
--compressor``), the model runs only the compressor's learned stage on the stored
``pre/*`` arrays (``VideoLLM.visual_slots(precomputed=...)``); the store's compressor must be
the configured one (checked).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from absl import logging

from td_jax import compressors
from td_jax.eval import mc
from td_jax.models.sharding import ACTIVATION_AXES
from td_jax.train.task import Task, register_task

# Pipeline options the trainer sets itself.
_TRAINER_OWNED = ("batch_size", "seed", "shuffle", "num_epochs", "drop_remainder", "with_options")
_PRE = "pre/"


def tokenizer_spec(t) -> str:
    """``task.data.tokenizer``, with ``"init_from"`` meaning the ``tokenizer.json`` beside the
    weights (``task.init_from``, else a ``task.model`` directory)."""
    spec = t.data.tokenizer
    if spec != "init_from":
        return spec
    from td_jax.convert import expand_path

    where = t.init_from or t.model
    path = os.path.join(expand_path(where), "tokenizer.json") if where else ""
    if not path or not os.path.isfile(path):
        raise ValueError(f"config key 'task.data.tokenizer' is 'init_from' but there is no tokenizer.json in "
                         f"{where or '(task.init_from is empty)'}")
    return path


def resolve_model_config(t):
    """The architecture ``config.task`` (``t``) names: ``t.model`` or, when empty, ``t.init_from``
    (a named config, a Hugging Face directory, a ``launch.convert`` output or a model.json)."""
    from td_jax.models import configs as model_configs

    key = "task.model" if t.model or not t.init_from else "task.init_from"
    src = t.model or t.init_from or "tiny_vlm"
    if src in model_configs.CONFIGS:
        cfg = model_configs.CONFIGS[src]
    else:
        from td_jax.convert import expand_path, hf_model_config
        from td_jax.convert.checkpoint import read_model

        path = expand_path(src)
        if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(os.path.join(path, "model.json")):
            kw = {"compressor": t.compressor or None, "budget": int(t.budget) or None,
                  "compressor_cfg": compressors.cfg_from_json(t.compressor_cfg or "{}", "config key 'task.compressor_cfg'")}
            try:
                cfg = hf_model_config(path, num_frames=int(t.data.num_frames) or None, **kw)
            except ValueError as e:
                raise ValueError(f"config key {key!r}: {e}") from None
        elif os.path.exists(path):
            cfg = read_model(path).cfg
        else:
            raise ValueError(f"config key {key!r}: {src!r} is neither a model config name (known: "
                             f"{sorted(model_configs.CONFIGS)}) nor an existing model directory or model.json")
    if not isinstance(cfg, model_configs.VLMConfig):
        raise ValueError(f"config key {key!r}: {src!r} is not a video LLM ({type(cfg).__name__})")
    return cfg


@register_task("video_qa")
class VideoQA(Task):
    activation_axes = ACTIVATION_AXES

    @classmethod
    def default_config(cls) -> mlc.ConfigDict:
        from td_jax.data import pipeline

        c = mlc.ConfigDict()
        c.name = "video_qa"
        c.model = ""
        c.llm = mlc.ConfigDict({"hidden_size": 0, "intermediate_size": 0, "num_layers": 0, "num_heads": 0,
                                "num_kv_heads": 0, "rope_theta": 0.0,
                                "tie_embeddings": mlc.config_dict.placeholder(bool)})
        c.vision = "named"
        c.patch = mlc.ConfigDict({"patch_size": 4, "dim": 64, "seed": 0, "pos_embed": "sincos2d", "pos_scale": 0.1,
                                  "temporal": False, "context": 0, "tower": ""})
        c.projector = ""
        c.projector_position = ""
        c.visual_attention = ""
        c.visual_tokens_stage = ""
        c.mm_hidden_size = 0
        c.compressor = ""
        c.budget = 0
        c.compressor_cfg = "{}"
        c.init_from = ""
        c.resize_vocab = True
        c.prepare_data = True
        c.remat = False            # rematerialise every vision / decoder layer in the backward pass
        c.eval_compress_seed = 0
        c.data = pipeline.default_config()
        for k in _TRAINER_OWNED:
            del c.data[k]
        return c

    def __init__(self, config):
        super().__init__(config)
        from td_jax.data import tokenizer as tok_lib
        from td_jax.models import configs as model_configs
        from td_jax.models.vlm import VideoLLM

        t = config.task
        cfg = resolve_model_config(t)
        ccfg = compressors.cfg_from_json(t.compressor_cfg, "config key 'task.compressor_cfg'")
        self.tokenizer = tok_lib.make_tokenizer(tokenizer_spec(t), t.data.num_options)
        tok = self.tokenizer
        repl: dict[str, Any] = {"video_token_id": int(tok.video_token_id), "pad_id": int(tok.pad_id)}
        cfg = cfg.replace(**self._architecture(cfg))
        if t.compressor:
            repl["compressor"] = t.compressor
        if t.budget:
            repl["budget"] = int(t.budget)
        if ccfg or t.compressor:
            repl["compressor_cfg"] = tuple(sorted(ccfg.items()))
        self._auto_budget = not t.budget and (t.compressor or cfg.compressor) in ("pool", "none")
        named = (t.model or t.init_from or "tiny_vlm") in model_configs.CONFIGS
        if t.resize_vocab and named and not t.init_from:
            repl["llm"] = dataclasses.replace(cfg.llm, vocab_size=int(tok.vocab_size))
        elif cfg.llm.vocab_size < tok.vocab_size:
            raise ValueError(f"model {t.model!r} has vocab_size {cfg.llm.vocab_size} < tokenizer's {tok.vocab_size}")
        cfg = cfg.replace(**repl).with_dtype(config.compute_dtype, config.param_dtype)
        if t.remat:
            cfg = cfg.replace(llm=dataclasses.replace(cfg.llm, remat=True),
                              vision=(dataclasses.replace(cfg.vision, remat=True)
                                      if isinstance(cfg.vision, model_configs.VisionConfig) else cfg.vision))
        # Fail now (naming the key) rather than inside jit if the compressor does not exist / accept cfg.
        from td_jax.models.vlm import compressor_for
        try:
            compressor_for(cfg)
        except (KeyError, TypeError) as e:
            raise ValueError(f"config keys 'task.compressor' / 'task.compressor_cfg': {e}") from None
        self._families: list[str] | None = None
        self._media_specs: dict[str, tuple] | None = None
        self._prepared = False
        self.model_cfg = cfg
        if self._auto_budget:            # every pooled cell / token of the configured frame count
            self.model_cfg = cfg = cfg.replace(budget=self._media_budget(cfg))
        self.model = VideoLLM(cfg)
        self.option_ids = np.asarray(tok.option_ids, np.int32)
        if t.data.source == "tokens":
            self._check_store()

    def _architecture(self, cfg) -> dict[str, Any]:
        """VLMConfig fields from the ``task`` overrides (``llm``, ``vision``, ``projector*``, ...)."""
        from td_jax.models import configs as model_configs

        t = self.config.task
        out: dict[str, Any] = {}
        llm = {k: v for k, v in t.llm.to_dict().items() if v not in (0, 0.0, None)}
        if llm:
            try:
                out["llm"] = dataclasses.replace(cfg.llm, **llm)
            except (TypeError, ValueError) as e:
                raise ValueError(f"config key 'task.llm': {e}") from None
        if t.vision == "patch":
            out["vision"] = model_configs.PatchEmbedConfig(
                patch_size=t.patch.patch_size, hidden_size=t.patch.dim, seed=t.patch.seed,
                pos_embed=t.patch.pos_embed, pos_scale=t.patch.pos_scale, temporal=t.patch.temporal,
                context=t.patch.context, tower=t.patch.tower)
            out["mm_hidden_size"] = None
        elif t.vision == "none":
            width = t.mm_hidden_size or cfg.vision_width
            out.update(vision=None, mm_hidden_size=int(width))
        elif t.vision != "named":
            raise ValueError(f"config key 'task.vision' must be 'named', 'patch' or 'none', got {t.vision!r}")
        for key in ("projector", "projector_position", "visual_attention", "visual_tokens_stage"):
            if t[key]:
                out[key] = t[key]
        if t.mm_hidden_size and t.vision != "none":
            out["mm_hidden_size"] = int(t.mm_hidden_size)
        return out

    def _check_store(self) -> None:
        """A compressed store must hold this compressor's stage (same name, budget, config)."""
        from td_jax.data import tokens_store

        meta = tokens_store.read_meta(self.config.task.data.tokens_dir)
        stored = meta.get("compressor")
        m = self.model_cfg
        if stored is None:
            return
        module = compressors.get(m.compressor, **m.compressor_kwargs).module(m.budget)
        want = module.stage_spec(int(stored.get("num_frames", 0)))
        if stored.get("stage") != json.loads(json.dumps(want)):
            raise ValueError(f"config key 'task.data.tokens_dir': the store {self.config.task.data.tokens_dir} holds "
                             f"the stage {stored.get('stage')} of {stored.get('name')!r}, but task.compressor="
                             f"{m.compressor!r} (budget {m.budget}) precomputes {want}")

    def _prepare(self) -> None:
        """Builds the TFDS dataset on process 0 if missing (once; all processes wait for it)."""
        d = self.config.task.data
        if self._prepared or d.source != "tfds" or d.tfds_dir or not self.config.task.prepare_data:
            return
        self._prepared = True
        import tensorflow_datasets as tfds
        import td_jax.data.moving_shapes_qa  # noqa: F401  (registers the builder)

        if jax.process_index() == 0:
            builder = tfds.builder(d.tfds_name, data_dir=d.data_dir or None)
            if not builder.is_prepared():
                logging.info("preparing %s in %s", d.tfds_name, builder.data_dir)
                builder.download_and_prepare()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("video_qa_prepare_data")

    def _builder_info(self):
        import tensorflow_datasets as tfds
        import td_jax.data.moving_shapes_qa  # noqa: F401

        d = self.config.task.data
        self._prepare()
        b = tfds.builder_from_directory(d.tfds_dir) if d.tfds_dir else tfds.builder(d.tfds_name,
                                                                                    data_dir=d.data_dir or None)
        return b.info

    def media_arrays(self) -> dict[str, tuple]:
        """``{batch key: (shape of one example, dtype)}`` of the media: ``frames (T, R, R, 3)``,
        ``visual_tokens (T, h, w, D)`` or a compressed store's ``pre/<name>`` arrays."""
        if self._media_specs is None:
            d = self.config.task.data
            if d.source == "tokens":
                from td_jax.data import tokens_store
                specs = tokens_store.array_specs(tokens_store.read_meta(d.tokens_dir))
                self._media_specs = {k: (tuple(v["shape"]), jnp.float32 if k == "visual_tokens" else jnp.dtype(v["dtype"]))
                               for k, v in specs.items()}
            elif d.num_frames and (d.resolution or self._model_resolution()):
                r = d.resolution or self._model_resolution()
                self._media_specs = {"frames": ((d.num_frames, r, r, 3), jnp.uint8)}
            elif d.source == "tfds":
                t, r = self._builder_info().features["frames"].shape[:2]
                self._media_specs = {"frames": ((d.num_frames or t, d.resolution or r, d.resolution or r, 3), jnp.uint8)}
            else:
                raise ValueError("config key 'task.data.num_frames' (and 'task.data.resolution' for a model without "
                                 f"a vision tower) is required for source={d.source!r}")
        return self._media_specs

    def media_shape(self) -> tuple:
        """(T, R, R, 3) frames or (T, h, w, D) tokens of one example (not for compressed stores)."""
        arrays = self.media_arrays()
        key = next((k for k in ("frames", "visual_tokens") if k in arrays), None)
        if key is None:
            raise ValueError("a compressed token store has no per-frame media shape")
        return arrays[key][0]

    def _media_budget(self, cfg) -> int:
        """``pool`` / ``none`` slots for the configured media: every pooled cell / token."""
        from td_jax.convert import default_budget
        from td_jax.models import configs as model_configs

        shape = self.media_shape()
        if self.config.task.data.source == "tokens":
            grid = tuple(shape[1:3])
        elif isinstance(cfg.vision, model_configs.PatchEmbedConfig):
            grid = int(shape[1]) // cfg.vision.patch_size
        elif cfg.vision is not None:
            grid = cfg.vision.grid
        else:
            raise ValueError("config key 'task.budget' is required for a model without a vision tower")
        return default_budget(cfg.compressor, cfg.compressor_kwargs, grid, int(shape[0]))

    def _model_resolution(self) -> int:
        """The vision tower's image size (frames are resized to it when data.resolution is 0)."""
        cfg = getattr(self, "model_cfg", None)
        return getattr(cfg.vision, "image_size", 0) if cfg is not None and cfg.vision is not None else 0

    def family_names(self) -> list[str]:
        if self._families is None:
            d = self.config.task.data
            if d.source == "tfds":
                self._families = list(self._builder_info().metadata["families"])
            elif d.source == "tokens" and "families" in self._store_meta():
                self._families = list(self._store_meta()["families"])
            elif d.source == "folder":
                from td_jax.data import video_folder
                # No list yet (e.g. --compile_only): one family; reading any data fails naming the key.
                self._families = (video_folder.folder_family_names(d.folder_jsonl, d.video_root or None,
                                                                   d.folder_layout) if d.folder_jsonl else ["all"])
            else:
                from td_jax.data import moving_shapes as ms
                self._families = list(ms.FAMILIES)
                logging.warning("family names for source=%s default to the moving-shapes families", d.source)
        return self._families

    def _store_meta(self) -> dict:
        from td_jax.data import tokens_store
        return tokens_store.read_meta(self.config.task.data.tokens_dir)

    def _text_options(self) -> bool:
        return self.config.task.data.answer_format == "text"

    def abstract_batch(self, batch_size: int, *, train: bool = True):
        self.family_names()   # read the dataset info now, outside any jit trace
        L = self.config.task.data.max_text_len
        out = {k: jax.ShapeDtypeStruct((batch_size,) + tuple(shape), dtype)
               for k, (shape, dtype) in self.media_arrays().items()}
        out.update({"input_ids": jax.ShapeDtypeStruct((batch_size, L), jnp.int32),
                    "attention_mask": jax.ShapeDtypeStruct((batch_size, L), jnp.bool_),
                    "loss_mask": jax.ShapeDtypeStruct((batch_size, L), jnp.float32)})
        if not train:
            out.update({"answer": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                        "family": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                        "index": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                        "num_options": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                        "valid": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)})
            if self._text_options():
                n = self.config.task.data.num_options
                out.update({"opt_input_ids": jax.ShapeDtypeStruct((batch_size, n, L), jnp.int32),
                            "opt_attention_mask": jax.ShapeDtypeStruct((batch_size, n, L), jnp.bool_),
                            "opt_loss_mask": jax.ShapeDtypeStruct((batch_size, n, L), jnp.float32)})
        return out

    def make_data(self, split, *, batch_size, train, seed, shard_index, shard_count):
        from td_jax.data import pipeline

        self._prepare()
        d = dict(self.config.task.data.to_dict())
        d.update(batch_size=batch_size * shard_count, seed=seed, shuffle=bool(train),
                 num_epochs=-1 if train else 1, drop_remainder=bool(train),
                 with_options=bool(not train and self._text_options()))
        if not train:
            d["curriculum"] = ""
        if d["source"] != "tokens":            # frames as the model sees them (resolution 0: the tower's)
            d.update(num_frames=self.media_shape()[0], resolution=self.media_shape()[1])
        return pipeline.make_pipeline(d, split, process_index=shard_index, process_count=shard_count,
                                      tokenizer=self.tokenizer)

    # ------------------------------------------------------------------ model
    def model_inputs(self, batch) -> dict:
        """The model's media keyword arguments for ``batch``: ``frames``, ``visual_tokens`` or a
        compressed store's ``precomputed`` stage."""
        if "visual_tokens" in batch:
            return {"visual_tokens": batch["visual_tokens"]}
        pre = {k[len(_PRE):]: v for k, v in batch.items() if k.startswith(_PRE)}
        if pre:
            return {"precomputed": pre}
        return {"frames": batch["frames"]}

    def init_params(self, rng, batch):
        k_params, k_comp, k_drop = jax.random.split(rng, 3)
        variables = self.model.init({"params": k_params, compressors.RNG_STREAM: k_comp, "dropout": k_drop},
                                    batch["input_ids"], batch["attention_mask"], **self.model_inputs(batch))
        return variables["params"]

    def loss_fn(self, params, batch, rng):
        from td_jax.models.vlm import next_token_loss

        k_comp, k_drop = jax.random.split(rng)
        logits = self.model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                  deterministic=False, rngs={compressors.RNG_STREAM: k_comp, "dropout": k_drop},
                                  **self.model_inputs(batch))
        loss, m = next_token_loss(logits, batch["input_ids"], batch["loss_mask"])
        return loss, {"token_accuracy": m["token_accuracy"], "target_tokens": m["num_target_tokens"]}

    def eval_fn(self, params, batch):
        """Summed per-family correct / count and answer NLL, plus ``per_example/*`` rows: the
        prediction, every option's score and the answer's NLL (``launch.eval`` reads these
        rows from this same program).  Only the example's own options (``num_options``) can
        be predicted: a padded option slot never wins."""
        from td_jax.models.vlm import VideoLLM, mc_logits, sequence_logprob

        rngs = {compressors.RNG_STREAM: jax.random.key(self.config.task.eval_compress_seed)}
        # the forward pass also reports each example's visual-token count (VideoLLM.visual_slots sows it)
        apply = functools.partial(self.model.apply, {"params": params}, rngs=rngs, mutable=["intermediates"],
                                  **self.model_inputs(batch))
        if self._text_options():      # each option's words scored, the video + prompt decoded once
            scores, state = apply(batch["opt_input_ids"], batch["opt_attention_mask"], batch["opt_loss_mask"],
                                  method=VideoLLM.score_options)
            # the true option's row is the training target: its negative log-likelihood is the answer NLL
            nll = -jnp.take_along_axis(scores, batch["answer"][:, None], axis=1)[:, 0]
        else:
            logits, state = apply(batch["input_ids"], batch["attention_mask"])
            scores = mc_logits(logits.astype(jnp.float32), batch["loss_mask"], jnp.asarray(self.option_ids))
            nll = -sequence_logprob(logits, batch["input_ids"], batch["loss_mask"])    # one log-softmax
        own = jnp.arange(scores.shape[1])[None, :] < batch["num_options"][:, None]
        chosen = jnp.where(own, scores, -jnp.inf)
        sums = mc.mc_sums(chosen, batch["answer"], batch["family"], batch["valid"],
                          num_families=len(self.family_names()))
        # Answer-token NLL summed over valid rows (mean over tokens in finalize_eval).
        sums["nll_sum"] = jnp.sum(jnp.where(batch["valid"], nll, 0.0))
        sums["nll_tokens"] = jnp.sum(batch["loss_mask"][:, 1:] * batch["valid"][:, None])
        pred = jnp.argmax(chosen, axis=-1).astype(jnp.int32)
        (counted,) = state["intermediates"]["visual_tokens"]      # one visual pass per forward
        sums["per_example/visual_tokens"] = counted
        sums.update({"per_example/index": jnp.where(batch["valid"], batch["index"], -1),
                     "per_example/prediction": pred, "per_example/answer": batch["answer"],
                     "per_example/family": batch["family"], "per_example/num_options": batch["num_options"],
                     "per_example/scores": scores, "per_example/answer_nll": nll})
        return sums

    def finalize_eval(self, sums):
        out = mc.mc_metrics(sums, self.family_names())
        n = float(np.asarray(sums["nll_tokens"]))
        out["loss"] = float(np.asarray(sums["nll_sum"])) / n if n else float("nan")
        return out

    def eval_report(self, metrics):
        return mc.markdown_table(metrics, self.family_names(), title=f"{self.config.task.model} + "
                                 f"{self.model_cfg.compressor} (budget {self.model_cfg.budget})")

    def checkpoint_meta(self) -> dict:
        """The architecture, stored with every checkpoint (``launch.eval`` reads it back)."""
        from td_jax.convert.checkpoint import model_record
        return {"model": model_record(self.model)}

    def abstract_params(self):
        """(abstract params [ShapeDtypeStructs], ``init_compressor(key)`` or None) of the model on
        one example of this task's media (nothing is allocated)."""
        from td_jax.convert import params as params_lib

        ab = self.abstract_batch(1, train=True)
        media = self.model_inputs(ab)
        args = (ab["input_ids"], ab["attention_mask"], media.get("frames"), media.get("visual_tokens"))
        kwargs = {"precomputed": media["precomputed"]} if "precomputed" in media else None
        abstract, init_compressor = params_lib.abstract_video_llm(self.model, 0, args=args, kwargs=kwargs)
        pdt = jnp.dtype(self.config.param_dtype)
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, pdt if jnp.issubdtype(a.dtype, jnp.floating)
                                                               else a.dtype), abstract)
        return abstract, init_compressor

    def load_pretrained(self):
        """``task.init_from`` weights fitted to the model (a learned compressor missing from them is
        freshly initialised; any other difference is a ValueError listing the parameter paths)."""
        t = self.config.task
        if not t.init_from:
            return None
        from td_jax.convert import expand_path, fit_params, load_hf
        from td_jax.convert.checkpoint import load_converted

        path = expand_path(t.init_from)
        abstract, init_compressor = self.abstract_params()
        key = jax.random.fold_in(jax.random.key(self.config.seed), 1)
        if os.path.isfile(os.path.join(path, "model.json")):
            _, params = load_converted(path)
        else:
            m = self.model_cfg
            num_frames = self.media_shape()[0] if self.config.task.data.source != "tokens" else None
            _, params = load_hf(path, self.config.param_dtype, compressor=m.compressor, compressor_cfg=m.compressor_cfg,
                                budget=m.budget, num_frames=num_frames, key=key)
        return fit_params(dict(params), abstract, init_compressor, key=key, source=path)
