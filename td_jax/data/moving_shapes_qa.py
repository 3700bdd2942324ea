"""TFDS builder ``moving_shapes_qa``: the procedural motion video-QA benchmark.

Written as ``array_record`` with TensorFlow-free features, so it is read back with
``tfds.data_source("moving_shapes_qa/tiny", split="train", data_dir=DIR)`` or
``tfds.builder_from_directory(DIR/moving_shapes_qa/tiny/2.0.0).as_data_source("train")``.

Build it with ``python -m launch.build_data --dataset=moving_shapes_qa/default --data_dir=DIR``.
See ``td_jax/data/DATASET_CARD.md`` for the families and sizes.
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from td_jax.data import moving_shapes as ms
from td_jax.data.parallel import parallel_map


@dataclasses.dataclass
class MovingShapesConfig(tfds.core.BuilderConfig):
    """Video size and split sizes (each a multiple of 32 keeps family × letter exact)."""

    num_frames: int = 16
    resolution: int = 64
    seed: int = 0
    split_sizes: tuple[tuple[str, int], ...] = (("train", 4096), ("validation", 512), ("test", 1024))
    families: tuple[str, ...] = ms.FAMILIES   # the question families asked, in turn

    @property
    def scene(self) -> ms.SceneConfig:
        return ms.SceneConfig(num_frames=self.num_frames, resolution=self.resolution)


CONFIGS = (
    MovingShapesConfig(name="tiny", description="8 frames of 32x32 px; 64/32/32 examples (tests).",
                       num_frames=8, resolution=32,
                       split_sizes=(("train", 64), ("validation", 32), ("test", 32))),
    MovingShapesConfig(name="default", description="16 frames of 64x64 px; 4096/512/1024 examples.",
                       num_frames=16, resolution=64),
    MovingShapesConfig(name="large", description="16 frames of 64x64 px; 32768/512/1024 examples.",
                       num_frames=16, resolution=64,
                       split_sizes=(("train", 32768), ("validation", 512), ("test", 1024))),
    MovingShapesConfig(name="motion", description=("16 frames of 64x64 px; 3 families (color, direction, "
                                                   "order); 12288/384/768 examples."),
                       num_frames=16, resolution=64, families=("color", "direction", "order"),
                       split_sizes=(("train", 12288), ("validation", 384), ("test", 768))),
    MovingShapesConfig(name="motion_curriculum",
                       description=("motion's 3 families plus the control lone_direction (the asked object "
                                    "alone: reads motion without finding a named object; curricula start with "
                                    "it); 16384/512/1024 examples, a quarter per family."),
                       num_frames=16, resolution=64, families=("color", "direction", "order", "lone_direction"),
                       split_sizes=(("train", 16384), ("validation", 512), ("test", 1024))),
    MovingShapesConfig(name="long", description="64 frames of 64x64 px; 1024/128/256 examples.",
                       num_frames=64, resolution=64,
                       split_sizes=(("train", 1024), ("validation", 128), ("test", 256))),
)


def family_names(config: MovingShapesConfig) -> list[str]:
    """The names ``family_id`` indexes: the eight families, and a control family only where the
    config asks one (so the configs without it report exactly the eight)."""
    n = max([len(ms.FAMILIES)] + [ms.ALL_FAMILIES.index(f) + 1 for f in config.families])
    return list(ms.ALL_FAMILIES[:n])


def _generate_one(args):
    """Worker entry (top level so spawned processes can import it)."""
    scene, seed, split, index, families = args
    ex = ms.make_example(scene, seed, split, index, families)
    return ex["id"], ex


class MovingShapesQa(tfds.core.GeneratorBasedBuilder):
    """Coloured shapes that enter, move, stop and leave; multiple-choice questions in 8 families."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release: 8 question families, 4 options each.",
        "2.0.0": ("No shortcut without the asked object: color, shape, direction, motion and position scenes "
                  "hold four objects whose values are exactly the four options, all drawn by the same law, so "
                  "an answer needs the object's name; speed objects bounce off the borders (position says "
                  "nothing about speed); order objects are visible for spans drawn independently of the "
                  "order (the first is not the longest visible). Same configs, sizes and features."),
    }
    BUILDER_CONFIGS = list(CONFIGS)
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """``num_workers``: generator processes (None: one per CPU, at most 8; 0: inline)."""
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._num_workers = min(os.cpu_count() or 1, 8) if num_workers is None else int(num_workers)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        T, R = c.num_frames, c.resolution
        features = tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "frames": tfds.features.Tensor(shape=(T, R, R, 3), dtype=np.uint8, encoding="zlib"),
            "question": tfds.features.Text(),
            "options": tfds.features.Sequence(tfds.features.Text(), length=ms.NUM_OPTIONS),
            "answer": tfds.features.Scalar(dtype=np.int32),
            "family": tfds.features.Text(),
            "family_id": tfds.features.Scalar(dtype=np.int32),
            "objects": {
                "color": tfds.features.Sequence(tfds.features.Text()),
                "shape": tfds.features.Sequence(tfds.features.Text()),
                "positions": tfds.features.Tensor(shape=(None, T, 2), dtype=np.float32),
                "visible": tfds.features.Tensor(shape=(None, T), dtype=np.bool_),
            },
        })
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Procedural motion video-QA: answers need appearance, motion direction, "
                         "speed/stop, temporal order or position at a moment. Families: "
                         + ", ".join(ms.FAMILIES)),
            features=features,
            metadata=tfds.core.MetadataDict(families=family_names(c), asked=list(c.families), seed=c.seed,
                                            num_frames=T, resolution=R),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split, n) for split, n in self.builder_config.split_sizes}

    def _generate_examples(self, split: str, n: int):
        c = self.builder_config
        jobs = [(c.scene, c.seed, split, i, tuple(c.families)) for i in range(n)]
        t0, step = time.time(), max(1, n // 10)
        results = parallel_map(_generate_one, jobs, self._num_workers, min_jobs=64)
        for k, item in enumerate(results, 1):
            if k % step == 0 or k == n:
                logging.info("moving_shapes_qa/%s %s: %d/%d examples (%.1fs)", c.name, split, k, n, time.time() - t0)
            yield item
