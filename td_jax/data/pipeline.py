"""Grain input pipelines for video QA: TFDS data sources, video folders, precomputed tokens.

The training loop calls::

    it = make_pipeline(config, "train", process_index=jax.process_index(),
                       process_count=jax.process_count())
    batch = next(it)          # dict of numpy arrays, see below
    state = it.get_state()    # or save with Orbax: grain.checkpoint.CheckpointSave(it)

Batches (``B`` = ``config.batch_size // process_count`` rows per process):

* ``frames [B, T, R, R, 3]`` uint8 — sources "tfds" and "folder";
  ``visual_tokens [B, T, h, w, D]`` float32 — source "tokens" with a store of tower tokens;
  ``pre/<name> [B, ...]`` — source "tokens" with a store of a compressor's precomputed,
  parameter-free stage (``launch/extract_tokens.py --compressor=...``);
* ``input_ids [B, L]`` int32 (right-padded with ``pad_id``; one ``video_token_id`` each),
  ``attention_mask [B, L]`` bool, ``loss_mask [B, L]`` float32 (1.0 on the answer tokens:
  the option letter, or the option's words with ``answer_format="text"``);
  with ``with_options``: ``opt_input_ids / opt_attention_mask / opt_loss_mask [B, n, L]``,
  every option as a text answer (for likelihood scoring);
* ``answer [B]`` int32 (option index), ``family [B]`` int32, ``index [B]`` int32 (position in
  the split, -1 for padding), ``valid [B]`` bool (False on padding rows),
  ``corrupt [B]`` bool (True where a video failed to decode and ``skip_corrupt`` replaced it
  by a padding row — sum it for the "skipped" metric), ``num_options [B]`` int32 (the
  example's option count; 0 for open-ended questions, conversations and padding).
Folder sources read any ``td_jax.data.video_folder`` layout (``folder_layout``): multiple-choice
rows are encoded with a letter answer, open-ended rows with their first reference answer,
instruction rows as a conversation (loss on every assistant turn).

How batches are drawn: ``families`` / ``max_examples`` select examples of the split, process
``i`` of ``n`` keeps examples ``i, i+n, ...``; Grain shuffles (reshuffled every epoch),
repeats and batches their *indices*; a reader turns each index batch into arrays — one
example at a time, or, with ``in_memory``, by indexing columns read once (the fast path for
small stores).  ``curriculum = "direction,order:600"`` draws the first 600 batches only from
those families of the whole split, then from the selected examples.  Every batch is a pure function of its position, so
``get_state``/``set_state`` resume to identical batches.  With ``drop_remainder`` (training)
every process keeps ``N // n`` examples; without it (eval) shards are padded with invalid
rows to equal length, so every example is seen exactly once and all processes run the same
number of batches.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import math
import os
import time
from typing import Any, Callable, Mapping

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
        "answer_format": "letter",        # letter: the target is the option letter | text: the option's words
        "list_options": True,             # list the options in the prompt (required by "letter")
        "with_options": False,            # also opt_input_ids/opt_attention_mask/opt_loss_mask [B, n, L]
        "families": "",                   # comma-separated question families to keep ("" = all)
        "max_examples": 0,                # keep the first N selected examples of the split (0 = all)
        "curriculum": "",                 # "family[,family...]:N": the first N batches only from those families
                                          # (drawn from the whole split: ``families`` selects the batches after)
        "in_memory": False,               # read the split once into memory, serve batches by indexing
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
    if base.answer_format not in tok_lib.ANSWER_FORMATS:
        raise ValueError(f"data config answer_format={base.answer_format!r}; expected one of {tok_lib.ANSWER_FORMATS}")
    if base.answer_format == "letter" and not base.list_options:
        raise ValueError("data config answer_format='letter' needs list_options=True (the letters name listed options)")
    if base.max_examples < 0:
        raise ValueError(f"data config max_examples={base.max_examples}; expected >= 0")
    if base.in_memory and base.worker_count:
        raise ValueError("data config in_memory=True serves batches from this process's memory: set worker_count=0")
    parse_curriculum(base.curriculum)
    return base


def parse_curriculum(spec: str) -> tuple[list[str], int]:
    """``"direction,order:600"`` -> (["direction", "order"], 600); "" -> ([], 0)."""
    if not spec:
        return [], 0
    fams, sep, n = spec.rpartition(":")
    names = [f.strip() for f in fams.split(",") if f.strip()]
    if not sep or not names or not n.strip().isdigit() or int(n) < 1:
        raise ValueError(f"data config curriculum={spec!r}: expected 'family[,family...]:batches' (batches >= 1)")
    return names, int(n)


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
            raise FileNotFoundError(f"no token split {path} (the store at {directory} has "
                                    f"{sorted(tokens_store.read_meta(directory).get('counts', {}))})")
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
    """Index (or -1 for padding) → one example dict of arrays (picklable, for grain workers).

    ``arrays``: ``{batch key: (shape, dtype)}`` of the media — ``frames``, ``visual_tokens``
    or a store's precomputed ``pre/<name>`` arrays.
    """

    def __init__(self, c, source, arrays: dict[str, tuple], tokenizer):
        self.source, self.kind, self.tok = source, c.source, tokenizer
        self.arrays, self.max_len, self.skip_corrupt = arrays, c.max_text_len, c.skip_corrupt
        self.answer_format, self.list_options, self.with_options = c.answer_format, c.list_options, c.with_options
        self.num_options = c.num_options

    def padding(self, index: int = -1, corrupt: bool = False) -> dict[str, np.ndarray]:
        L = self.max_len
        ids = np.full(L, self.tok.pad_id, np.int32)
        ids[0] = self.tok.video_token_id  # keeps "one placeholder per row" true on padding rows
        out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.arrays.items()}
        out.update({"input_ids": ids, "attention_mask": np.zeros(L, bool), "loss_mask": np.zeros(L, np.float32),
                    "answer": np.int32(0), "family": np.int32(0), "index": np.int32(index),
                    "valid": np.bool_(False), "corrupt": np.bool_(corrupt), "num_options": np.int32(0)})
        if self.with_options:
            n = self.num_options
            out.update({"opt_input_ids": np.repeat(ids[None], n, 0), "opt_attention_mask": np.zeros((n, L), bool),
                        "opt_loss_mask": np.zeros((n, L), np.float32)})
        return out

    def media(self, rec) -> dict[str, np.ndarray]:
        if "frames" in self.arrays:
            return {"frames": load_media(self.kind, rec, self.arrays["frames"][0])}
        if "visual_tokens" in self.arrays:
            return {"visual_tokens": load_media(self.kind, rec, self.arrays["visual_tokens"][0])}
        out = {}
        for k, (shape, dtype) in self.arrays.items():
            x = np.asarray(rec[k])
            if x.shape != tuple(shape):
                raise ValueError(f"token record {rec['id']}: {k} has shape {x.shape}, the store says {tuple(shape)}")
            out[k] = x.astype(dtype)
        return out

    def __call__(self, index) -> dict[str, np.ndarray]:
        index = int(index)
        if index < 0:
            return self.padding()
        rec = self.source[index]
        try:
            media = self.media(rec)
        except video_lib.VideoDecodeError as e:
            if not self.skip_corrupt:
                raise
            logging.warning("skipping corrupt video (example %d): %s", index, e)
            return self.padding(index, corrupt=True)
        question, options = _s(rec["question"]), [_s(o) for o in rec["options"]]
        if self.kind == "folder":      # multiple choice, open-ended or a conversation
            text = chat.encode_record(self.tok, rec, self.max_len)
        else:
            text = tok_lib.encode_mc(self.tok, question, options, int(rec["answer"]), self.max_len,
                                     self.answer_format, self.list_options)
        if self.with_options:
            if not options:
                raise ValueError(f"example {index} ({_s(rec['id'])}) has no options to score (data config "
                                 "with_options=True needs multiple-choice questions)")
            opts = tok_lib.encode_mc_options(self.tok, question, options, self.max_len, self.list_options)
            pad = self.num_options - len(options)
            if pad:   # fewer options than slots: repeat the last one, never the argmax of a tie
                opts = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in opts.items()}
                opts["loss_mask"][len(options):] = 0.0
            text.update({f"opt_{k}": v for k, v in opts.items()})
        return {**media, **text, "answer": np.int32(rec["answer"]), "family": np.int32(rec["family_id"]),
                "index": np.int32(index), "valid": np.bool_(True), "corrupt": np.bool_(False),
                "num_options": np.int32(len(options))}

    def family(self, index: int) -> str:
        return _s(self.source[int(index)]["family"])


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class ReadBatch:
    """Index batch ``[b <= B]`` (-1 = padding) → batch dict ``[B, ...]``, one example at a time."""

    def __init__(self, to_example: ToExample, size: int):
        self.to_example, self.size = to_example, size

    def __call__(self, indices) -> dict[str, np.ndarray]:
        idx = np.full(self.size, -1, np.int64)
        idx[:len(indices)] = np.asarray(indices)
        return _stack([self.to_example(i) for i in idx])


_COLUMNS: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_COLUMNS_KEEP = 8     # splits kept in memory per process (runs of one sweep reuse them)


class ReadColumns:
    """Index batch → batch dict by indexing columns read once (``in_memory``).

    ``columns[k]`` holds the examples of ``indices`` then one padding row, so a -1 index
    (padding) reads the last row.  Columns are cached per process by ``cache_key`` (source,
    split, text settings, indices), so the runs of a sweep read a store once.
    """

    def __init__(self, to_example: ToExample, indices: np.ndarray, size: int, label: str, cache_key: tuple):
        self.size = size
        keep = np.unique(indices[indices >= 0])
        key = cache_key + (hashlib.sha1(keep.tobytes()).hexdigest(),)
        if key in _COLUMNS:
            _COLUMNS.move_to_end(key)
            self.row, self.columns = _COLUMNS[key]
            return
        self.row = np.full(int(indices.max(initial=-1)) + 2, -1, np.int64)
        self.row[keep] = np.arange(len(keep))
        t0 = time.time()
        self.columns = _stack([to_example(i) for i in keep] + [to_example.padding()])
        logging.info("%s: %d examples in memory (%.1f MB, %.1f s)", label, len(keep),
                     sum(v.nbytes for v in self.columns.values()) / 2 ** 20, time.time() - t0)
        _COLUMNS[key] = (self.row, self.columns)
        while len(_COLUMNS) > _COLUMNS_KEEP:
            _COLUMNS.popitem(last=False)

    def __call__(self, indices) -> dict[str, np.ndarray]:
        idx = np.full(self.size, -1, np.int64)
        idx[:len(indices)] = np.asarray(indices)
        rows = np.where(idx >= 0, self.row[np.maximum(idx, 0)], -1)
        return {k: v[rows] for k, v in self.columns.items()}


def shard_indices(n: int, process_index: int, process_count: int, *, drop_remainder: bool) -> np.ndarray:
    """This process's shard of ``n`` examples, as positions ``0..n-1`` (``-1`` pads eval shards
    to ``ceil(n / count)``)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    idx = np.arange(n)[process_index::process_count]
    if drop_remainder:
        return idx[: n // process_count]
    m = math.ceil(n / process_count)
    return np.concatenate([idx, np.full(m - len(idx), -1, idx.dtype)])


def _open(c, split: str, tok):
    """(source, ToExample, family names in family_id order or None) for ``split``."""
    if c.source == "tfds":
        source, (T, R) = _tfds_source(c, split)
        arrays = {"frames": ((T, R, R, 3), np.uint8)}
    elif c.source == "folder":
        source, (T, R) = _folder_source(c, split)
        arrays = {"frames": ((T, R, R, 3), np.uint8)}
    else:
        meta = tokens_store.read_meta(c.tokens_dir)
        arrays = {k: (tuple(v["shape"]), np.dtype(v["dtype"]) if k != "visual_tokens" else np.float32)
                  for k, v in tokens_store.array_specs(meta).items()}
        source = _TokenSource(c.tokens_dir, split)
    return source, ToExample(c, source, arrays, tok)


def _families_asked(fams: np.ndarray, names, what: str) -> np.ndarray:
    """Positions of the split's examples (``fams``: each one's family) that ask one of
    ``names`` (``what`` names the config key in the error when some are never asked)."""
    unknown = sorted(set(names) - set(fams.tolist()))
    if unknown:
        raise ValueError(f"data config {what}: {unknown} never asked in this split (it asks "
                         f"{sorted(set(fams.tolist()))})")
    return np.flatnonzero(np.isin(fams, sorted(set(names))))


def _selected(c, split_families: Callable[[], np.ndarray], n: int) -> np.ndarray:
    """Positions of the split's ``n`` examples that ``families`` / ``max_examples`` keep
    (``split_families()``: every example's family, read only when ``families`` is set)."""
    keep = {f.strip() for f in c.families.split(",") if f.strip()}
    idx = _families_asked(split_families(), keep, "families") if keep else np.arange(n)
    return idx[: c.max_examples] if c.max_examples else idx


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
    source, to_example = _open(c, split, tok)

    # every example's family, read once (a whole-record read per example) and only if asked for
    split_families = functools.cache(lambda: np.array([to_example.family(i) for i in range(len(source))]))
    chosen = _selected(c, split_families, len(source))
    pos = shard_indices(len(chosen), process_index, process_count, drop_remainder=c.drop_remainder)
    if len(pos) == 0:
        raise ValueError(f"split {split!r} has {len(chosen)} selected examples: too few for {process_count} processes")
    idx = np.where(pos >= 0, chosen[np.maximum(pos, 0)], -1)
    if c.drop_remainder and len(idx) < per_process:
        raise ValueError(f"split {split!r}: {len(idx)} examples per process, fewer than the per-process batch "
                         f"{per_process}")
    cur_fams, cur_batches = parse_curriculum(c.curriculum)
    index_batches = _index_batches(idx, c, per_process, c.seed)
    pool = idx[:0]
    if cur_batches:
        # The curriculum draws from the whole split (``families`` / ``max_examples`` select the
        # main phase): a warm-up family can lead the run without being asked after it.
        wanted = _families_asked(split_families(), cur_fams, f"curriculum={c.curriculum!r} (split {split!r})")
        where = shard_indices(len(wanted), process_index, process_count, drop_remainder=c.drop_remainder)
        pool = wanted[where[where >= 0]]
        if len(pool) < per_process:
            raise ValueError(f"data config curriculum={c.curriculum!r}: split {split!r} has {len(pool)} examples of "
                             f"{cur_fams} per process, fewer than the batch {per_process}")
        first = _index_batches(pool, c, per_process, c.seed + 1)[:cur_batches]
        index_batches = grain.MapDataset.concatenate([first, index_batches])
    if c.in_memory:
        if c.source == "tokens":
            where = (os.path.abspath(c.tokens_dir), os.stat(tokens_store.split_path(c.tokens_dir, split)).st_mtime_ns)
        elif c.source == "folder":
            where = (c.folder_jsonl, c.video_root)
        else:
            where = (c.tfds_dir, c.tfds_name, c.data_dir)
        key = (c.source, where, split, c.num_frames, c.resolution, c.tokenizer, c.num_options, c.max_text_len,
               c.answer_format, c.list_options, c.with_options, c.skip_corrupt)
        read = ReadColumns(to_example, np.concatenate([idx, pool]), per_process, f"{c.source} {split}", key)
    else:
        read = ReadBatch(to_example, per_process)
    it = index_batches.map(read).to_iter_dataset(
        grain.ReadOptions(num_threads=c.read_threads, prefetch_buffer_size=c.prefetch_buffer_size))
    if c.worker_count > 0:
        if not flags.FLAGS.is_parsed():
            raise RuntimeError("worker_count > 0 needs absl flags parsed first (grain reads its flags in the "
                               "workers): run inside absl.app.run, or call absl.flags.FLAGS.mark_as_parsed()")
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.worker_count,
                                                         per_worker_buffer_size=c.worker_buffer_size))
    return it


def _index_batches(idx: np.ndarray, c, per_process: int, seed: int) -> grain.MapDataset:
    """Batches of example indices ``[per_process]`` (the last one shorter without ``drop_remainder``)."""
    ds = grain.MapDataset.source(idx.tolist())
    if c.shuffle:
        ds = ds.shuffle(seed=seed)
    if c.num_epochs != 1:
        ds = ds.repeat(None if c.num_epochs < 0 else c.num_epochs)
    return ds.batch(per_process, drop_remainder=c.drop_remainder, batch_fn=np.asarray)


def make_pipeline(config: Mapping[str, Any], split: str, *, process_index: int | None = None,
                  process_count: int | None = None, tokenizer=None) -> grain.DatasetIterator:
    """An iterator of batches (``get_state``/``set_state``; Orbax via ``grain.checkpoint``)."""
    return iter(make_dataset(config, split, process_index=process_index, process_count=process_count,
                             tokenizer=tokenizer))


def family_names(config: Mapping[str, Any]) -> list[str] | None:
    """The source's family names in ``family_id`` order (TFDS builder metadata), or None."""
    c = _cfg(config)
    if c.source != "tfds":
        return None
    import tensorflow_datasets as tfds
    import td_jax.data.moving_shapes_qa  # noqa: F401  (registers the builders)

    builder = tfds.builder_from_directory(c.tfds_dir) if c.tfds_dir else tfds.builder(c.tfds_name,
                                                                                       data_dir=c.data_dir or None)
    fams = (builder.info.metadata or {}).get("families")
    return list(fams) if fams else None


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
