"""Generic pieces for experiment reports: seed statistics, significance of a margin, markdown
blocks and plots.  Nothing here knows an experiment's arms (``experiments/*_report.py`` do).

Statistics.  An arm run with seeds ``s_1..s_n`` and scored on the same N test questions has
mean accuracy ``p``; its standard error counts both the seed spread and the test set's
sampling error, ``SE² = var_seeds / n + p (1 - p) / N`` (:func:`standard_error`).  A margin
between two arms is *significant* when it exceeds twice ``sqrt(SE_a² + SE_b²)``
(:func:`margin`).
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def standard_error(values: Sequence[float], n_questions: int) -> float:
    """SE of the mean accuracy of ``values`` (one per seed) on ``n_questions`` questions:
    ``sqrt(var_seeds / n_seeds + p (1 - p) / N)``."""
    p, s = mean_std(values)
    if math.isnan(p) or n_questions <= 0:
        return float("nan")
    return math.sqrt(s * s / len(values) + p * (1 - p) / n_questions)


def margin(a: Sequence[float], b: Sequence[float], n_questions: int, offset: float = 0.0) -> dict:
    """The margin ``mean(a) - (1 + offset)·mean(b)`` (``offset=-0.02`` tests "a >= 98% of b"),
    its standard error, and whether it exceeds 2 SE (``a``, ``b``: accuracies per seed).

    Returns ``{"diff", "se", "significant", "sign"}``: sign +1 (a clearly above), -1 (clearly
    below), 0 (within noise).
    """
    scale = 1.0 + offset
    pa, pb = mean_std(a)[0], mean_std(b)[0]
    se = math.sqrt(standard_error(a, n_questions) ** 2 + (scale * standard_error(b, n_questions)) ** 2)
    d = pa - scale * pb
    sign = 1 if d > 2 * se else (-1 if d < -2 * se else 0)
    return {"diff": d, "se": se, "significant": sign != 0, "sign": sign}


def above_chance(values: Sequence[float], n_questions: int, chance: float) -> dict:
    """Is the mean accuracy of ``values`` (one per seed, on ``n_questions`` questions) above
    ``chance`` beyond 2 SE?  ``{"diff", "se", "significant", "sign"}`` as :func:`margin`."""
    se = standard_error(values, n_questions)
    d = mean_std(values)[0] - chance
    sign = 1 if d > 2 * se else (-1 if d < -2 * se else 0)
    return {"diff": d, "se": se, "significant": sign != 0, "sign": sign}


def pct(x: float | None, digits: int = 1) -> str:
    """0.634 -> '63.4' ('—' for None / NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{100 * x:.{digits}f}"


def pm(mean: float, std: float, n: int) -> str:
    """'63.4 ± 1.2' (percent) over n > 1 seeds, else '63.4'."""
    return f"{pct(mean)} ± {100 * std:.1f}" if n > 1 and not math.isnan(std) else pct(mean)


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def replace_block(path: str, begin: str, end: str, block: str) -> None:
    """Replaces the text between the marker lines ``begin`` and ``end`` of file ``path``."""
    with open(path) as f:
        text = f.read()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path}: no '{begin}' ... '{end}' block to replace")
    with open(path, "w") as f:
        f.write(text[:i + len(begin)] + "\n" + block.strip("\n") + "\n" + text[j:])


def jsonable(x):
    """``x`` with numpy scalars / arrays turned into Python numbers / lists."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_vs_tokens(points: Sequence[Mapping], path: str, *, title: str, chance: float | None = None) -> None:
    """One marker per point ``{"label", "x" (% tokens), "y" (accuracy 0-1), "err" (0-1), "marker"}``,
    log x, error bars ±err."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.get_cmap("tab20" if len(points) > 10 else "tab10")
    for i, p in enumerate(points):
        m = p.get("marker", "o")
        ax.errorbar([p["x"]], [100 * p["y"]], yerr=[100 * p["err"]], fmt=m, ms=11 if m == "*" else 7, capsize=3,
                    label=p["label"], color=colors(i % colors.N))
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("visual tokens fed to the LLM (% of all tokens, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grouped_bars(groups: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                      path: str, *, title: str, chance: float | None = None) -> None:
    """Bars per group (e.g. question family) for each series ``{label: (values, errors)}`` (0-1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(7.0, 0.5 * len(series) * len(groups)), 4.2))
    width = 0.85 / max(len(series), 1)
    colors = plt.get_cmap("tab20" if len(series) > 10 else "tab10")
    x = np.arange(len(groups))
    for i, (label, (vals, errs)) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, 100 * np.asarray(vals), width, yerr=100 * np.asarray(errs),
               capsize=2, label=label, color=colors(i % colors.N))
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls=":", lw=1)
    ax.set_xticks(x, groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_example(frames: np.ndarray, dynamics_map: np.ndarray | None, k: int, text: str, path: str, *,
                 title: str, n_frames: int = 6) -> None:
    """Frames ``[T, R, R, 3]`` on top, the dynamics map ``[T, H, W]`` (cluster ids) below, ``text`` under them."""
    plt = _plt()
    t = frames.shape[0]
    idx = np.linspace(0, t - 1, min(n_frames, t)).round().astype(int)
    rows = 2 if dynamics_map is not None else 1
    fig, axes = plt.subplots(rows + 1, len(idx), figsize=(2 * len(idx), 2 * rows + 1.4),
                             gridspec_kw={"height_ratios": [1] * rows + [0.7]})
    axes = np.asarray(axes).reshape(rows + 1, len(idx))
    cmap = plt.get_cmap("tab20", max(k, 1))
    for j, f in enumerate(idx):
        axes[0, j].imshow(frames[f])
        axes[0, j].set_title(f"frame {f}", fontsize=8)
        if dynamics_map is not None:
            axes[1, j].imshow(dynamics_map[f], cmap=cmap, vmin=-0.5, vmax=max(k, 1) - 0.5, interpolation="nearest")
            axes[1, j].set_title(f"dynamics map {f}", fontsize=8)
    for ax in axes[:rows].ravel():
        ax.set_xticks([]), ax.set_yticks([])
    gs = axes[rows, 0].get_gridspec()
    for ax in axes[rows]:
        ax.remove()
    tax = fig.add_subplot(gs[rows, :])
    tax.axis("off")
    tax.text(0.0, 1.0, text, va="top", ha="left", fontsize=8, family="monospace")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wrap(s: str, width: int) -> str:
    out, line = [], ""
    for word in s.split(" "):
        if line and len(line) + len(word) + 1 > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    return "\n".join(out)


def plot_histograms(counts: Mapping[str, Sequence[int]], path: str, *, title: str, xlabel: str) -> None:
    """Side-by-side histograms ``{label: counts[k]}`` (counts[k] = how many chose k)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    names = list(counts)
    if not names:
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        ax.axis("off")
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        c = np.asarray(counts[n], float)
        ks = np.arange(len(c))
        mean = float((ks * c).sum() / max(c.sum(), 1))
        ax.bar(ks + (i - (len(names) - 1) / 2) * width, c, width=width, label=f"{n} (mean {mean:.2f})")
    if names:
        ax.set_xlabel(xlabel)
        ax.set_ylabel("videos")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def result_paths(results_dir: str, files: Mapping[str, str]) -> dict[str, str]:
    """{what: path} of ``files`` ({what: file name}) in ``results_dir``."""
    return {k: os.path.join(results_dir, v) for k, v in files.items()}
