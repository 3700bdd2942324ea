"""Name-blind audit of the moving-shapes benchmark, straight from the generator (no TFDS build).

    python -m launch.audit_data --configs=motion,default --n=2000
    python -m launch.audit_data --generator=OLD/moving_shapes.py   # another version of the generator

For each config and family, the accuracy of every rule of ``td_jax.data.qa_checker`` that
answers without the question's object name (``OBJECT_RULES``) or without the video
(``TextPrior``, fit on the validation split), on ``--n`` examples per family of ``--split``.
Rules marked (x) read what the family asks about (``BLIND_EXEMPT``) and are not shortcuts.
"""
from __future__ import annotations

import importlib.util
import sys
import time

from absl import app, flags

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("configs", "motion,default", "moving_shapes_qa configs to audit (comma-separated).")
flags.DEFINE_integer("n", 2000, "Examples per family to score.")
flags.DEFINE_integer("fit_n", 1000, "Validation examples per family that fit the text prior.")
flags.DEFINE_string("split", "train", "Split whose examples are scored.")
flags.DEFINE_string("generator", None, "Path of a moving_shapes.py to audit instead of the package's.")


def load_generator(path: str | None):
    """The package's generator, or the module at ``path`` (any version with ``SceneConfig`` and
    ``make_example``; ``make_qa`` is used when present)."""
    if not path:
        from td_jax.data import moving_shapes
        return moving_shapes
    spec = importlib.util.spec_from_file_location("moving_shapes_audited", path)
    if spec is None:
        raise FileNotFoundError(f"--generator: cannot load {path!r} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod       # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def audit_table(gen, config, n: int, fit_n: int, split: str) -> list[str]:
    """Markdown lines: one row per family of ``config``, one column per rule, accuracy in %."""
    from td_jax.data import qa_checker

    make = getattr(gen, "make_qa", None) or gen.make_example
    scene = gen.SceneConfig(num_frames=config.num_frames, resolution=config.resolution)
    fams = tuple(config.families)
    control = set(getattr(gen, "CONTROL_FAMILIES", ()))
    t0 = time.time()
    fit = [make(scene, config.seed, "validation", i, fams) for i in range(fit_n * len(fams))]
    exs = [make(scene, config.seed, split, i, fams) for i in range(n * len(fams))]
    table = qa_checker.blind_audit(exs, fit, resolution=config.resolution)
    rules = ["text_prior", *qa_checker.OBJECT_RULES]
    lines = [f"### moving_shapes_qa/{config.name}: {n} {split} examples per family ({time.time() - t0:.0f}s); "
             f"text prior fit on {fit_n} validation examples per family; accuracy %, chance 25; "
             "(x) = reads what the family asks about", "",
             "| family | " + " | ".join(rules) + " | max blind |", "|---" * (len(rules) + 2) + "|"]
    for fam in fams:
        row, cells, blind = table[fam], [], []
        for r in rules:
            if r not in row:
                cells.append("–")
                continue
            exempt = r in qa_checker.BLIND_EXEMPT.get(fam, ())
            cells.append(f"{100 * row[r]:.1f}" + (" (x)" if exempt else ""))
            if not exempt:
                blind.append(row[r])
        label = f"{fam} (control: the object alone, name-blind by design)" if fam in control else fam
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{100 * max(blind):.1f}** |")
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from td_jax.data import moving_shapes_qa

    gen = load_generator(FLAGS.generator)
    configs = {c.name: c for c in moving_shapes_qa.CONFIGS}
    names = [c for c in FLAGS.configs.split(",") if c]
    unknown = [c for c in names if c not in configs]
    if unknown or not names:
        raise app.UsageError(f"--configs: unknown {unknown or names}; known: {sorted(configs)}")
    for name in names:
        print("\n".join(audit_table(gen, configs[name], FLAGS.n, FLAGS.fit_n, FLAGS.split)) + "\n", flush=True)


if __name__ == "__main__":
    cli.run(main)
