"""A PNG contact sheet of benchmark examples: sampled frames plus question, options, answer."""
from __future__ import annotations

import textwrap
from typing import Iterable, Mapping

import numpy as np


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def contact_sheet(examples: Iterable[Mapping], path: str, *, frames_per_row: int = 6, dpi: int = 110) -> int:
    """Draw one row per example (``frames_per_row`` uniformly spaced frames and the QA text)
    and save a PNG to ``path``.  Returns the number of examples drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exs = list(examples)
    if not exs:
        raise ValueError("contact_sheet needs at least one example")
    fig, axes = plt.subplots(len(exs), frames_per_row + 1, figsize=(1.3 * frames_per_row + 3.0, 1.45 * len(exs)),
                             squeeze=False, gridspec_kw={"width_ratios": [1] * frames_per_row + [2.4]})
    for row, ex in zip(axes, exs):
        frames = np.asarray(ex["frames"])
        idx = np.linspace(0, len(frames) - 1, frames_per_row).round().astype(int)
        for ax, t in zip(row[:frames_per_row], idx):
            ax.imshow(frames[t], interpolation="nearest")
            ax.set_title(f"t={t}", fontsize=7)
            ax.axis("off")
        row[-1].axis("off")
        opts = [_s(o) for o in ex["options"]]
        ans = int(ex["answer"])
        lines = [f"[{_s(ex['family'])}] " + _s(ex["question"])]
        lines += [("* " if i == ans else "  ") + f"{'ABCDEFGH'[i]}. {o}" for i, o in enumerate(opts)]
        text = "\n".join(textwrap.fill(l, 40, subsequent_indent="    ") for l in lines)
        row[frames_per_row].text(0.0, 0.5, text, fontsize=7.5, family="monospace", va="center",
                                 transform=row[frames_per_row].transAxes)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.4)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return len(exs)
