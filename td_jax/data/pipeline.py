"""Grain input pipelines for video QA: TFDS data sources, video folders, precomputed tokens.

The training loop calls::

    it = make_pipeline(config, "train", process_index=jax.process_index(),
                       process_count=jax.process_count())
    batch = next(it)          # dict of numpy arrays, see below
    state = it.get_state()    # or save with Orbax: grain.checkpoint.CheckpointSave(it)

Batches (``B`` = ``config.batch_size // process_count`` rows per process):

* ``frames [B, T, R, R, 3]`` uint8 — sources "tfds" and "folder";
  ``visual_tokens [B, T, h, w, D]`` float32 — source "tokens";
* ``input_ids [B, L]`` int32 (right-padded with ``pad_id``; one ``video_token_id`` each),
  ``attention_mask [B, L]`` bool, ``loss_mask [B, L]`` float32 (1.0 on the answer tokens);
* ``answer [B]`` int32 (option index), ``family [B]`` int32, ``index [B]`` int32 (position in
  the split, -1 for padding), ``valid [B]`` bool (False on padding rows),
  ``corrupt [B]`` bool (True where a video failed to decode and ``skip_corrupt`` replaced it
  by a padding row — sum it for the "skipped" metric), ``num_options [B]`` int32 (the
  example's option count; 0 for open-ended questions, conversations and padding).
Folder sources read any ``td_jax.data.video_folder`` layout (``folder_layout``): multiple-choice
rows are encoded with a letter answer, open-ended rows with their first reference answer,
instruction rows as a conversation (loss on every assistant turn).

Sharding: process ``i`` of ``n`` reads examples ``i, i+n, i+2n, ...``.  With
``drop_remainder`` (training) every process keeps ``N // n`` of them; without it (eval)
shards are padded with invalid rows to equal length, so every example is seen exactly
once and all processes run the same number of batches.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import grain
import ml_collections
import numpy as np
from absl import flags, logging

from td_jax.data import chat
from td_jax.data import tokenizer as tok_lib
from td_jax.data import tokens_store
from td_jax.data import video as video_lib
from td_jax.data import video_folder

SOURCES = ("tfds", "folder", "tokens")


def default_config() -> ml_collections.ConfigDict:
    """Every pipeline option, with defaults (the moving-shapes tiny benchmark from TFDS)."""
    return ml_collections.ConfigDict({
        "source": "tfds",                 # tfds | folder | tokens
        "tfds_name": "moving_shapes_qa/tiny",  # source=tfds: registered name/config ...
        "tfds_dir": "",                   # ... or a prepared dataset directory (builder_from_directory)
        "data_dir": "",                   # TFDS data_dir ("" = TFDS default)
        "folder_jsonl": "",               # source=folder: question list (file or dir), "{split}" is replaced by the split
        "folder_layout": "auto",          # source=folder: video_folder.LAYOUTS (mc, open, instruct, nextqa, mvbench, ...)
        "video_root": "",                 # source=folder: video paths are relative to this ("" = JSONL dir)
        "tokens_dir": "",                 # source=tokens: directory written by launch/extract_tokens.py
        "num_frames": 0,                  # frames per video (0 = as stored; required for folder)
        "resolution": 0,                  # frame side in px (0 = as stored; required for folder)
        "tokenizer": "word",              # word | word:PATH | path/to/tokenizer.json
        "num_options": 4,                 # option letters A.. (max options per question)
        "max_text_len": 64,               # L
        "batch_size": 8,                  # global batch (split evenly over processes)
        "shuffle": True,
        "seed": 0,
        "num_epochs": -1,                 # -1 = repeat forever
        "drop_remainder": True,           # False: pad the last batch with valid=False rows
        "skip_corrupt": False,            # True: undecodable videos become padding rows (corrupt=True)
        "worker_count": 0,                # grain mp_prefetch worker processes (0 = in-process)
        "worker_buffer_size": 2,
        "read_threads": 4,
        "prefetch_buffer_size": 8,
    })


def _cfg(config) -> ml_collections.ConfigDict:
    base = default_config()
    unknown = sorted(set(dict(config)) - set(base.keys()))
    if unknown:
        raise KeyError(f"unknown data config keys {unknown}; known: {sorted(base.keys())}")
    base.update(dict(config))
    if base.num_epochs == 0 or base.num_epochs < -1:
        raise ValueError(f"data config num_epochs={base.num_epochs}; expected -1 (forever) or >= 1")
    if base.source not in SOURCES:
        raise ValueError(f"data config source={base.source!r}; expected one of {SOURCES}")
    return base


# ----------------------------------------------------------------------------- sources


def _tfds_source(c, split):
    import tensorflow_datasets as tfds
    import td_jax.data.moving_shapes_qa  # noqa: F401  (registers the builders)
    import td_jax.data.video_folder  # noqa: F401

    if c.tfds_dir:
        builder = tfds.builder_from_directory(c.tfds_dir)
    else:
        builder = tfds.builder(c.tfds_name, data_dir=c.data_dir or None)
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in {builder.info.full_name} (has {list(builder.info.splits)})")
    src = builder.as_data_source(split)
    t, r = builder.info.features["frames"].shape[:2]
    return src, (c.num_frames or t, c.resolution or r)


def _folder_records(c, split):
    if not c.folder_jsonl:
        raise ValueError("source=folder needs config.folder_jsonl (a question list, '{split}' allowed)")
    recs = video_folder.read_records(video_folder.split_path(c.folder_jsonl, split), c.video_root or None,
                                     c.folder_layout)
    # one family vocabulary for every split, so family ids mean the same thing in each
    fams = video_folder.folder_family_names(c.folder_jsonl, c.video_root or None, c.folder_layout)
    for r in recs:
        r["family_id"] = fams.index(r["family"])
    return recs


def _folder_source(c, split):
    if not (c.num_frames and c.resolution):
        raise ValueError("source=folder needs config.num_frames and config.resolution")
    return _folder_records(c, split), (c.num_frames, c.resolution)


class _TokenSource:
    """ArrayRecord token store as a random-access source of decoded records."""

    def __init__(self, directory: str, split: str):
        path = tokens_store.split_path(directory, split)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no token split {path}")
        self._src = grain.sources.ArrayRecordDataSource([path])

    def __len__(self):
        return len(self._src)

    def __getitem__(self, i):
        return tokens_store.decode_record(self._src[i])


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def load_media(kind: str, rec, media_shape: tuple) -> np.ndarray:
    """A record's frames ``[T, R, R, 3]`` uint8 (decoded, re-sampled to ``T``, resized to ``R``)
    or its ``visual_tokens`` (checked against the store's ``media_shape``)."""
    if kind == "tokens":
        x = np.asarray(rec["visual_tokens"], np.float32)
        if x.shape != tuple(media_shape):
            raise ValueError(f"token record {rec['id']}: shape {x.shape} != store shape {media_shape}")
        return x
    T, R = media_shape[:2]
    if kind == "folder":
        return video_lib.decode_video(rec["video"], T, R)
    frames = np.asarray(rec["frames"])
    if frames.shape[0] != T:
        frames = frames[video_lib.sample_indices(frames.shape[0], T)]
    return video_lib.resize_frames(frames, R)


class ToExample:
    """Index (or -1 for padding) → one example dict of arrays (picklable, for grain workers)."""

    def __init__(self, c, source, media_shape: tuple, tokenizer):
        self.source, self.kind, self.tok = source, c.source, tokenizer
        self.media_shape, self.max_len, self.skip_corrupt = media_shape, c.max_text_len, c.skip_corrupt
        self.media_key = "visual_tokens" if c.source == "tokens" else "frames"

    def padding(self, index: int = -1, corrupt: bool = False) -> dict[str, np.ndarray]:
        dtype = np.float32 if self.media_key == "visual_tokens" else np.uint8
        L = self.max_len
        ids = np.full(L, self.tok.pad_id, np.int32)
        ids[0] = self.tok.video_token_id  # keeps "one placeholder per row" true on padding rows
        return {self.media_key: np.zeros(self.media_shape, dtype), "input_ids": ids,
                "attention_mask": np.zeros(L, bool), "loss_mask": np.zeros(L, np.float32),
                "answer": np.int32(0), "family": np.int32(0), "index": np.int32(index),
                "valid": np.bool_(False), "corrupt": np.bool_(corrupt), "num_options": np.int32(0)}

    def __call__(self, index) -> dict[str, np.ndarray]:
        index = int(index)
        if index < 0:
            return self.padding()
        rec = self.source[index]
        try:
            media = load_media(self.kind, rec, self.media_shape)
        except video_lib.VideoDecodeError as e:
            if not self.skip_corrupt:
                raise
            logging.warning("skipping corrupt video (example %d): %s", index, e)
            return self.padding(index, corrupt=True)
        if self.kind == "folder":      # multiple choice, open-ended or a conversation
            text = chat.encode_record(self.tok, rec, self.max_len)
        else:
            text = tok_lib.encode_mc(self.tok, _s(rec["question"]), [_s(o) for o in rec["options"]],
                                     int(rec["answer"]), self.max_len)
        return {self.media_key: media, **text, "answer": np.int32(rec["answer"]),
                "family": np.int32(rec["family_id"]), "index": np.int32(index),
                "valid": np.bool_(True), "corrupt": np.bool_(False), "num_options": np.int32(len(rec["options"]))}


def _pad_batch(batch: dict[str, np.ndarray], size: int, pad: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(batch["valid"])
    if n == size:
        return batch
    return {k: np.concatenate([v, np.repeat(pad[k][None], size - n, axis=0)]) for k, v in batch.items()}


class _PadTo:
    def __init__(self, size, pad):
        self.size, self.pad = size, pad

    def __call__(self, batch):
        return _pad_batch(batch, self.size, self.pad)


def shard_indices(n: int, process_index: int, process_count: int, *, drop_remainder: bool) -> np.ndarray:
    """Indices of this process's shard (``-1`` pads eval shards to ``ceil(n / count)``)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    idx = np.arange(n)[process_index::process_count]
    if drop_remainder:
        return idx[: n // process_count]
    m = math.ceil(n / process_count)
    return np.concatenate([idx, np.full(m - len(idx), -1, idx.dtype)])


def make_dataset(config: Mapping[str, Any], split: str, *, process_index: int | None = None,
                 process_count: int | None = None, tokenizer=None) -> grain.IterDataset:
    """The Grain dataset of batches for ``split`` (see the module docstring).

    ``process_index/process_count`` default to this JAX process (``ShardByJaxProcess``).
    ``tokenizer`` defaults to ``make_tokenizer(config.tokenizer, config.num_options)``.
    """
    c = _cfg(config)
    if process_index is None or process_count is None:
        shard = grain.sharding.ShardByJaxProcess(drop_remainder=c.drop_remainder)
        process_index, process_count = shard.shard_index, shard.shard_count
    if c.batch_size % process_count:
        raise ValueError(f"batch_size {c.batch_size} is not divisible by process_count {process_count}")
    per_process = c.batch_size // process_count
    tok = tokenizer if tokenizer is not None else tok_lib.make_tokenizer(c.tokenizer, c.num_options)

    if c.source == "tfds":
        source, (T, R) = _tfds_source(c, split)
        media_shape = (T, R, R, 3)
    elif c.source == "folder":
        source, (T, R) = _folder_source(c, split)
        media_shape = (T, R, R, 3)
    else:
        media_shape = tuple(tokens_store.read_meta(c.tokens_dir)["token_shape"])
        source = _TokenSource(c.tokens_dir, split)
    to_example = ToExample(c, source, media_shape, tok)

    idx = shard_indices(len(source), process_index, process_count, drop_remainder=c.drop_remainder)
    if len(idx) == 0:
        raise ValueError(f"split {split!r} has {len(source)} examples: too few for {process_count} processes")
    ds = grain.MapDataset.source(idx.tolist())
    if c.shuffle:
        ds = ds.shuffle(seed=c.seed)
    if c.num_epochs != 1:
        ds = ds.repeat(None if c.num_epochs < 0 else c.num_epochs)
    ds = ds.map(to_example).batch(per_process, drop_remainder=c.drop_remainder)
    if not c.drop_remainder:
        ds = ds.map(_PadTo(per_process, to_example.padding()))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads, prefetch_buffer_size=c.prefetch_buffer_size))
    if c.worker_count > 0:
        if not flags.FLAGS.is_parsed():
            raise RuntimeError("worker_count > 0 needs absl flags parsed first (grain reads its flags in the "
                               "workers): run inside absl.app.run, or call absl.flags.FLAGS.mark_as_parsed()")
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.worker_count,
                                                         per_worker_buffer_size=c.worker_buffer_size))
    return it


def make_pipeline(config: Mapping[str, Any], split: str, *, process_index: int | None = None,
                  process_count: int | None = None, tokenizer=None) -> grain.DatasetIterator:
    """An iterator of batches (``get_state``/``set_state``; Orbax via ``grain.checkpoint``)."""
    return iter(make_dataset(config, split, process_index=process_index, process_count=process_count,
                             tokenizer=tokenizer))


def example_records(config: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
    """The text side of every example of ``split``, in index order (a batch row's ``index``), as
    ``td_jax.data.video_folder`` records (``id, question, options, answer, answers, family,
    groups``; folder records also their layout's extra fields).  Media are not decoded for
    folders and token stores; a TFDS source decodes each record once."""
    c = _cfg(config)
    if c.source == "folder":
        return _folder_records(c, split)
    source = _tfds_source(c, split)[0] if c.source == "tfds" else _TokenSource(c.tokens_dir, split)
    out = []
    for i in range(len(source)):
        rec = source[i]
        opts, ans, fam = [_s(o) for o in rec["options"]], int(rec["answer"]), _s(rec["family"])
        out.append({"id": _s(rec["id"]), "question": _s(rec["question"]), "options": opts, "answer": ans,
                    "answers": [opts[ans]] if 0 <= ans < len(opts) else [], "conversations": None,
                    "family": fam, "groups": {"family": fam}})
    return out


def iter_examples(config: Mapping[str, Any], split: str):
    """Every example of ``split`` in order as ``(meta, frames [T, R, R, 3] uint8)``; ``meta`` has
    ``id, question, options, answer, family, family_id`` (plain Python).  Source "tfds" or
    "folder"; corrupt videos raise, or are skipped (and logged) with ``skip_corrupt``."""
    c = _cfg(config)
    if c.source == "tokens":
        raise ValueError("iter_examples reads frames: source must be 'tfds' or 'folder'")
    source, (T, R) = _tfds_source(c, split) if c.source == "tfds" else _folder_source(c, split)
    for i in range(len(source)):
        rec = source[i]
        try:
            frames = load_media(c.source, rec, (T, R, R, 3))
        except video_lib.VideoDecodeError as e:
            if not c.skip_corrupt:
                raise
            logging.warning("skipping corrupt video (example %d): %s", i, e)
            continue
        meta = {"id": _s(rec["id"]), "question": _s(rec["question"]), "options": [_s(o) for o in rec["options"]],
                "answer": int(rec["answer"]), "family": _s(rec["family"]), "family_id": int(rec["family_id"])}
        yield meta, frames
