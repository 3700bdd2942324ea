"""Video-QA folders: a JSONL of ``{video, question, options, answer}`` next to video files.

Each line of ``{split}.jsonl``::

    {"video": "clips/0001.mp4", "question": "...", "options": ["...", "..."], "answer": 2,
     "id": "optional", "family": "optional question type"}

``video`` is relative to ``video_root`` (default: the JSONL's folder); ``answer`` is the
option index (an option letter "A".."Z" is accepted too).  The same layout in a TFDS
``manual_dir`` is prepared once into array_record by the ``video_qa_folder`` builder, so a
user who has NextQA-MC or ActivityNet-QA (as multiple choice) locally converts it once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import string
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from td_jax.data import video as video_lib
from td_jax.data.parallel import parallel_map


def read_jsonl(path: str, video_root: str | None = None) -> list[dict[str, Any]]:
    """Parse and validate a video-QA JSONL; errors name the file and line number.

    Returns records with absolute ``video`` paths, ``answer`` as int, ``id`` and ``family``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video-QA list at {path}")
    root = video_root if video_root is not None else os.path.dirname(os.path.abspath(path))
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from e
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in ("video", "question", "options", "answer") if k not in rec]
            if missing:
                raise ValueError(f"{where}: missing keys {missing}")
            opts = rec["options"]
            if not (isinstance(opts, list) and len(opts) >= 2 and all(isinstance(o, str) for o in opts)):
                raise ValueError(f"{where}: 'options' must be a list of >= 2 strings, got {opts!r}")
            ans = rec["answer"]
            if isinstance(ans, str) and len(ans) == 1 and ans in string.ascii_uppercase:
                ans = string.ascii_uppercase.index(ans)
            if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(opts):
                raise ValueError(f"{where}: 'answer' must be an option index < {len(opts)} or letter, got {rec['answer']!r}")
            out.append({
                "video": os.path.join(root, rec["video"]),
                "question": str(rec["question"]),
                "options": list(opts),
                "answer": int(ans),
                "id": str(rec.get("id", f"{os.path.basename(path)}:{lineno}")),
                "family": str(rec.get("family", "all")),
            })
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def family_names(records) -> list[str]:
    """Sorted distinct ``family`` values: ``family_id`` is an index into this list."""
    return sorted({r["family"] for r in records})


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
