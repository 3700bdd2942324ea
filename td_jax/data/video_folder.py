"""Video-QA folders: question lists in the layouts people download, next to video files.

Every layout is read into the same record (:func:`read_records`)::

    {"video": absolute path, "question": str, "options": [str, ...] ([] unless multiple choice),
     "answer": option index (-1 unless multiple choice), "answers": reference answer texts,
     "conversations": [{"role": "user" | "assistant", "text": str}, ...] or None,
     "id": str, "family": str (the category scored separately), "groups": {name: value}}

Layouts (``layout=``; ``"auto"`` picks one from the first row's fields). Files may be JSONL,
a JSON list (or ``{"data": [...]}``), Parquet (needs ``pyarrow``), or a directory of them.

| layout | fields read | video file | options / answer | family (groups) |
|---|---|---|---|---|
| ``mc`` (ours) | video, question, options, answer, id?, family? | ``video_root/video`` | ``options``; index or letter | ``family`` or "all" |
| ``open`` (ours) | video, question, answer (text) or answers (list), id?, family? | ``video_root/video`` | none; references = answer(s) | ``family`` or "all" |
| ``instruct`` (LLaVA-Video-178K) | video, conversations [{from: human/gpt, value}], id?, data_source? | ``video_root/video`` | none; the turns (the ``<image>`` / ``<video>`` marker is dropped: the video goes first in the first user turn) | ``data_source`` |
| ``nextqa`` (lmms-eval NExTQA, MC) | video, question, a0..a4, answer (index), type, qid | ``video_root/{video}.mp4``, root default ``NExTVideo/`` beside the file | a0..a4 | ``type`` (CW, CH, TN, TC, TP, DB, DC, DL, DO) |
| ``nextqa`` (open-ended) | video, question, answer (text), additional_ref_answer?, type, qid | as above | none; references = answer + additional_ref_answer | ``type`` |
| ``mvbench`` (OpenGVLab/MVBench ``json/<task>.json``) | video, question, candidates, answer (text) | ``video_root/<task folder>/video``, root default ``../video`` beside ``json/`` | candidates; answer = the matching candidate | task = file name (or ``task``) |
| ``videomme`` (lmms-lab/Video-MME) | videoID, question, options ["A. ...", ...], answer (letter), duration, domain, sub_category, task_type, question_id | ``video_root/{videoID}.mp4`` (.MP4, .mkv), root default ``data/`` beside the file | options without the "A. " prefix | ``duration`` (domain, sub_category, task_type) |
| ``activitynetqa`` (lmms-eval) | video_name, question, answer, question_id, type | ``video_root/v_{video_name}.mp4`` (.webm, .mkv), root default ``all_test/`` beside the file | none; references = answer; question capitalised + "?" as lmms-eval | ``type`` |

``video_root`` (default: as the table says, else the list's folder) anchors relative paths.
Missing video files are not checked here: decoding raises an error naming the file (or skips
it with ``skip_corrupt``).  MVBench tasks whose "videos" are frame folders are not supported
(the decoder reads video files).  The same MC layout in a TFDS ``manual_dir`` is prepared
once into array_record by the ``video_qa_folder`` builder.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
import string
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from td_jax.data import video as video_lib
from td_jax.data.parallel import parallel_map

LAYOUTS = ("auto", "mc", "open", "instruct", "nextqa", "mvbench", "videomme", "activitynetqa")
SPLITS = ("train", "validation", "test")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")

# MVBench: the folder under video_root holding each task's videos (the layout lmms-eval reads;
# clevrer/star videos may also sit under data0613/).
MVBENCH_FOLDERS = {
    "action_sequence": "star/Charades_segment", "action_prediction": "star/Charades_segment",
    "object_interaction": "star/Charades_segment", "action_antonym": "ssv2_video_mp4",
    "fine_grained_action": "Moments_in_Time_Raw/videos", "unexpected_action": "FunQA_test/test",
    "object_existence": "clevrer/video_validation", "moving_count": "clevrer/video_validation",
    "moving_direction": "clevrer/video_validation", "moving_attribute": "clevrer/video_validation",
    "counterfactual_inference": "clevrer/video_validation", "action_localization": "sta/sta_video_segment",
    "scene_transition": "scene_qa/video", "action_count": "perception/videos",
    "object_shuffle": "perception/videos", "state_change": "perception/videos",
    "character_order": "perception/videos", "fine_grained_pose": "nturgbd_convert",
    "egocentric_navigation": "vlnqa", "episodic_reasoning": "tvqa/video_fps3_hq_segment",
}


# ----------------------------------------------------------------------------- tables
def _rows_of_file(path: str) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for every row of one JSONL / JSON / Parquet file (``where`` names the
    file and line or row number for error messages)."""
    if path.endswith(".jsonl"):
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e})") from None
    elif path.endswith(".json"):
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of examples (or {{'data': [...]}}), "
                             f"got {type(data).__name__}")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
    elif path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row
    else:
        raise ValueError(f"{path}: unknown question-list format (expected {', '.join(TABLE_SUFFIXES)})")


def table_files(path: str) -> list[str]:
    """The question-list files at ``path``: the file itself, or every JSONL / JSON / Parquet
    file of a directory (sorted).  FileNotFoundError if there is none."""
    path = os.path.expandvars(os.path.expanduser(path))
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.endswith(TABLE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"{path}: no {'/'.join(TABLE_SUFFIXES)} question lists in this directory")
        return files
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video-QA list at {path}")
    return [path]


def detect_layout(row: dict) -> str:
    """The layout a row's fields belong to (see the module docstring)."""
    keys = set(row)
    if "conversations" in keys:
        return "instruct"
    if "a0" in keys or "additional_ref_answer" in keys:
        return "nextqa"
    if "candidates" in keys:
        return "mvbench"
    if "videoID" in keys:
        return "videomme"
    if "video_name" in keys:
        return "activitynetqa"
    if "options" in keys:
        return "mc"
    if "question" in keys and ("answers" in keys or isinstance(row.get("answer"), str)):
        return "open"
    raise ValueError(f"cannot tell the layout from the fields {sorted(keys)}; pass layout= one of {LAYOUTS[1:]}")


# ----------------------------------------------------------------------------- layouts
def _need(row, where, keys):
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")


def _short(where: str) -> str:
    """A default example id: the list's file name and line / row (``train.jsonl:3``)."""
    return os.path.basename(where)


def _first_existing(candidates: list[str]) -> str:
    return next((c for c in candidates if os.path.exists(c)), candidates[0])


def _with_ext(root: str, stem: str, exts=("mp4", "MP4", "mkv", "webm")) -> str:
    if os.path.splitext(stem)[1]:
        return os.path.join(root, stem)
    return _first_existing([os.path.join(root, f"{stem}.{e}") for e in exts])


def _letter_or_index(ans, n: int, where: str, field: str = "answer") -> int:
    if isinstance(ans, str) and len(ans.strip()) == 1 and ans.strip() in string.ascii_uppercase:
        ans = string.ascii_uppercase.index(ans.strip())
    if isinstance(ans, (bool, np.bool_)) or not isinstance(ans, (int, np.integer)) or not 0 <= int(ans) < n:
        raise ValueError(f"{where}: {field!r} must be an option index < {n} or letter, got {ans!r}")
    return int(ans)


def _options(opts, where: str, field: str = "options") -> list[str]:
    if not (isinstance(opts, (list, tuple)) and len(opts) >= 2 and all(isinstance(o, str) for o in opts)):
        raise ValueError(f"{where}: {field!r} must be a list of >= 2 strings, got {opts!r}")
    return list(opts)


def _record(video, question, *, options=(), answer=-1, answers=(), conversations=None, id, family,
            groups=None) -> dict:
    family = str(family) if family not in (None, "") else "all"
    if id is None or id == "":
        raise ValueError("record without an id")
    return {"video": video, "question": str(question), "options": list(options), "answer": int(answer),
            "answers": [str(a) for a in answers if a not in (None, "")], "conversations": conversations,
            "id": str(id), "family": family, "groups": {"family": family, **(groups or {})}}


def _mc(row, where, root, _task):
    _need(row, where, ("video", "question", "options", "answer"))
    opts = _options(row["options"], where)
    ans = _letter_or_index(row["answer"], len(opts), where)
    return _record(os.path.join(root, row["video"]), row["question"], options=opts, answer=ans, answers=[opts[ans]],
                   id=row.get("id", _short(where)), family=row.get("family"))


def _open(row, where, root, _task):
    _need(row, where, ("video", "question"))
    refs = row.get("answers", row.get("answer"))
    refs = [refs] if isinstance(refs, str) else refs
    if not (isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs)):
        raise ValueError(f"{where}: open-ended rows need 'answer' (a string) or 'answers' (a list of strings)")
    return _record(os.path.join(root, row["video"]), row["question"], answers=refs, id=row.get("id", _short(where)),
                   family=row.get("family"))


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_MEDIA_MARKER = re.compile(r"\s*<(?:image|video)>\s*")


def _instruct(row, where, root, _task):
    _need(row, where, ("video", "conversations"))
    turns = row["conversations"]
    if not isinstance(turns, list) or len(turns) < 2:
        raise ValueError(f"{where}: 'conversations' must be a list of >= 2 turns")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("from", t.get("role")) not in _ROLES or not isinstance(
                t.get("value", t.get("content")), str):
            raise ValueError(f"{where}: conversations[{i}] must be {{'from': 'human'|'gpt', 'value': str}}, got {t!r}")
        role, text = _ROLES[t.get("from", t.get("role"))], t.get("value", t.get("content"))
        if out and out[-1]["role"] == role:
            raise ValueError(f"{where}: conversations[{i}] repeats the role {role!r} (turns must alternate)")
        out.append({"role": role, "text": _MEDIA_MARKER.sub(" ", text).strip() if role == "user" else text.strip()})
    if out[0]["role"] != "user":
        raise ValueError(f"{where}: the first turn must be from 'human'")
    return _record(os.path.join(root, row["video"]), out[0]["text"], answers=[out[1]["text"]], conversations=out,
                   id=row.get("id", _short(where)), family=row.get("data_source"))


def _nextqa(row, where, root, _task):
    _need(row, where, ("video", "question", "answer"))
    video = _with_ext(root, str(row["video"]), ("mp4", "MP4"))
    rid = row.get("qid", _short(where))
    rid = f"{row['video']}_{rid}" if "qid" in row else rid
    if "a0" in row:
        opts = [str(row[f"a{i}"]).strip() for i in range(10) if f"a{i}" in row]
        ans = _letter_or_index(row["answer"], len(opts), where)
        return _record(video, str(row["question"]).strip(), options=opts, answer=ans, answers=[opts[ans]], id=rid,
                       family=row.get("type"))
    return _record(video, str(row["question"]).strip(), answers=[row["answer"], row.get("additional_ref_answer")],
                   id=rid, family=row.get("type"))


def _mvbench(row, where, root, task):
    _need(row, where, ("video", "question", "candidates", "answer"))
    task = row.get("task", task)
    opts = _options([str(c) for c in row["candidates"]] if isinstance(row["candidates"], list) else row["candidates"],
                    where, "candidates")
    if row["answer"] not in opts:
        raise ValueError(f"{where}: 'answer' {row['answer']!r} is not one of the candidates {opts}")
    ans = opts.index(row["answer"])
    sub = MVBENCH_FOLDERS.get(task, "")
    video = _first_existing([os.path.join(root, sub, row["video"]), os.path.join(root, "data0613", sub, row["video"])])
    return _record(video, row["question"], options=opts, answer=ans,
                   answers=[opts[ans]], id=row.get("id", _short(where)), family=task)


_LETTER_PREFIX = re.compile(r"^\s*\(?[A-Z][.)]\s*")


def _videomme(row, where, root, _task):
    _need(row, where, ("videoID", "question", "options", "answer"))
    opts = [_LETTER_PREFIX.sub("", o) for o in _options(list(row["options"]), where)]
    ans = _letter_or_index(row["answer"], len(opts), where)
    groups = {k: str(row[k]) for k in ("duration", "domain", "sub_category", "task_type") if row.get(k)}
    return _record(_with_ext(root, str(row["videoID"]), ("mp4", "MP4", "mkv")), row["question"], options=opts,
                   answer=ans, answers=[opts[ans]], id=row.get("question_id", _short(where)), family=row.get("duration"),
                   groups=groups)


def _activitynetqa(row, where, root, _task):
    _need(row, where, ("video_name", "question", "answer"))
    q = str(row["question"]).strip()
    return _record(_with_ext(root, f"v_{row['video_name']}", ("mp4", "webm", "mkv")), q.capitalize() + "?",
                   answers=[str(row["answer"])], id=row.get("question_id", _short(where)), family=row.get("type"))


_READERS = {"mc": _mc, "open": _open, "instruct": _instruct, "nextqa": _nextqa, "mvbench": _mvbench,
            "videomme": _videomme, "activitynetqa": _activitynetqa}


def _default_root(layout: str, file: str) -> str:
    here = os.path.dirname(os.path.abspath(file))
    sub = {"nextqa": "NExTVideo", "videomme": "data", "activitynetqa": "all_test",
           "mvbench": os.path.join(os.pardir, "video")}.get(layout)
    if sub and os.path.isdir(os.path.join(here, sub)):
        return os.path.normpath(os.path.join(here, sub))
    return here


def read_records(path: str, video_root: str | None = None, layout: str = "auto") -> list[dict[str, Any]]:
    """Every example of a question list (file or directory) as records (module docstring).

    Errors name the file and line / row.  ``video_root`` overrides the layout's default.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown video-QA layout {layout!r}; expected one of {LAYOUTS}")
    out = []
    for file in table_files(path):
        task = os.path.splitext(os.path.basename(file))[0]
        rows = _rows_of_file(file)
        kind, root = layout, None
        for where, row in rows:
            if kind == "auto":
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
                kind = detect_layout(row)
            if root is None:
                root = (os.path.expandvars(os.path.expanduser(video_root)) if video_root
                        else _default_root(kind, file))
            out.append(_READERS[kind](row, where, root, task))
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def read_jsonl(path: str, video_root: str | None = None) -> list[dict[str, Any]]:
    """Our multiple-choice JSONL (layout ``mc``); see :func:`read_records`."""
    return read_records(path, video_root, "mc")


def family_names(records) -> list[str]:
    """Sorted distinct ``family`` values: ``family_id`` is an index into this list."""
    return sorted({r["family"] for r in records})


def split_path(pattern: str, split: str) -> str:
    """``pattern`` with ``{split}`` replaced (a pattern without it names one list for every split)."""
    return os.path.expandvars(os.path.expanduser(pattern.replace("{split}", split)))


@functools.lru_cache(maxsize=16)
def _families_of(path: str, video_root: str | None, layout: str, mtime: float) -> tuple[str, ...]:
    del mtime  # part of the cache key only
    return tuple(family_names(read_records(path, video_root, layout)))


def folder_family_names(pattern: str, video_root: str | None = None, layout: str = "auto") -> list[str]:
    """Sorted union of the families of every list ``pattern`` names (with ``{split}``: every
    file or directory matching it for any split name), so a family id means the same family in
    every split."""
    if "{split}" in pattern:
        full = split_path(pattern, "\0")
        rx = re.compile("".join(r"[\w-]+" if part == "\0" else re.escape(part) for part in re.split("(\0)", full)) + "$")
        paths = sorted(p for p in glob.glob(glob.escape(full).replace("\0", "*")) if rx.match(p))
    else:
        paths = [split_path(pattern, "")]
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        raise FileNotFoundError(f"no video-QA list matches {pattern!r}")
    names: set[str] = set()
    for p in paths:
        names.update(_families_of(p, video_root, layout, os.path.getmtime(p)))
    return sorted(names)


# ----------------------------------------------------------------------------- TFDS builder


@dataclasses.dataclass
class VideoFolderConfig(tfds.core.BuilderConfig):
    num_frames: int = 16
    resolution: int = 224


def _decode_job(args):
    path, num_frames, resolution, skip_corrupt = args
    try:
        return video_lib.decode_video(path, num_frames, resolution), None
    except video_lib.VideoDecodeError as e:
        if not skip_corrupt:
            raise
        return None, str(e)


class VideoQaFolder(tfds.core.GeneratorBasedBuilder):
    """A local video-QA folder (``manual_dir/{split}.jsonl`` + videos) as array_record.

    Splits are whichever of ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` exist.
    Frames are sampled uniformly (as lmms-eval does) and squashed to the config's size.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put {split}.jsonl files (lines of {video, question, options, answer[, id, family]}) and the "
        "videos they name (paths relative to the JSONL) in the manual_dir.")
    BUILDER_CONFIGS = [
        VideoFolderConfig(name="tiny", description="8 frames at 32x32 (tests).", num_frames=8, resolution=32),
        VideoFolderConfig(name="f16_r64", description="16 frames at 64x64.", num_frames=16, resolution=64),
        VideoFolderConfig(name="f16_r224", description="16 frames at 224x224.", num_frames=16, resolution=224),
        VideoFolderConfig(name="f32_r384", description="32 frames at 384x384 (LLaVA-OV).", num_frames=32,
                          resolution=384),
    ]
    DEFAULT_CONFIG_NAME = "f16_r224"

    def __init__(self, *, skip_corrupt: bool = False, num_workers: int = 0, **kwargs):
        """``skip_corrupt``: leave undecodable videos out (logged and counted in
        ``info.metadata['skipped']``) instead of failing on the first one."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._skip_corrupt = bool(skip_corrupt)
        self._num_workers = int(num_workers)
        self._skipped: dict[str, list[str]] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description="Video question answering from a local folder (multiple choice).",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "frames": tfds.features.Tensor(shape=(c.num_frames, c.resolution, c.resolution, 3),
                                               dtype=np.uint8, encoding="zlib"),
                "question": tfds.features.Text(),
                "options": tfds.features.Sequence(tfds.features.Text()),
                "answer": tfds.features.Scalar(dtype=np.int32),
                "family": tfds.features.Text(),
                "family_id": tfds.features.Scalar(dtype=np.int32),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = str(dl_manager.manual_dir)
        splits = {s: os.path.join(root, f"{s}.jsonl") for s in ("train", "validation", "test")}
        splits = {s: p for s, p in splits.items() if os.path.isfile(p)}
        if not splits:
            raise FileNotFoundError(f"no train/validation/test .jsonl in manual_dir {root}")
        records = {s: read_jsonl(p) for s, p in splits.items()}
        fams = family_names([r for rs in records.values() for r in rs])
        self.info.metadata["families"] = fams
        return {s: self._generate_examples(s, rs, fams) for s, rs in records.items()}

    def _generate_examples(self, split, records, fams):
        c = self.builder_config
        jobs = [(r["video"], c.num_frames, c.resolution, self._skip_corrupt) for r in records]
        skipped = self._skipped.setdefault(split, [])
        for r, (frames, err) in zip(records, parallel_map(_decode_job, jobs, self._num_workers, min_jobs=16)):
            if frames is None:
                logging.warning("skipping corrupt video: %s", err)
                skipped.append(r["video"])
                self.info.metadata["skipped"] = {s: len(v) for s, v in self._skipped.items()}
                continue
            yield r["id"], {
                "id": r["id"], "frames": frames, "question": r["question"], "options": r["options"],
                "answer": r["answer"], "family": r["family"], "family_id": fams.index(r["family"]),
            }
