"""Tables, target checks and plots for the motion-QA experiment (``launch/motion_qa.py``).

Inputs are plain Python: a list of arm summaries (dicts with at least ``name``, ``method``,
``visual_tokens``, ``percent_tokens``, ``accuracy``, ``accuracy_std``,
``accuracy_by_family``, ``accuracy_by_family_std``, ``seeds``, ``tokdense``, ``steps``,
``train_time_s``, ``eval_time_s``) and a ``meta`` dict (``n_tokens``, ``budget``,
``families``, ...).  :func:`write_all` writes ``motion_qa.json`` (the list of arms),
``motion_qa_meta.json``, ``motion_qa.md`` and the PNGs.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

HEADLINE = "token_dynamics"
MOTION_FAMILIES = ("direction", "order")
# The paper's ablation ladder (NextQA-MC %, 32 tokens): rung -> (our arm name or None, paper accuracy).
PAPER_LADDER = (
    ("base only", "base_only", 35.2),
    ("base + map without attention", "base + map (no attention)", 38.9),
    ("random map", "random_map", 46.9),
    ("random base", "random_base", 37.7),
    ("full method", "token_dynamics", 57.5),
)


def _by_name(arms: Sequence[Mapping]) -> dict[str, Mapping]:
    return {a["name"]: a for a in arms}


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _pm(mean: float, std: float, n: int) -> str:
    return f"{_pct(mean)} ± {100 * std:.1f}" if n > 1 else _pct(mean)


def results_table(arms: Sequence[Mapping], families: Sequence[str]) -> str:
    """Markdown: one row per arm — accuracy per family and overall (%; mean ± sample std
    over seeds where there are several), visual tokens, % of the original, TokDense, steps,
    train/eval time."""
    head = ["arm", "method", *families, "**all**", "visual tokens", "% tokens", "TokDense", "seeds", "steps",
            "train loss first→last", "train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        n = len(a["seeds"])
        fam = [_pm(a["accuracy_by_family"][f], a["accuracy_by_family_std"][f], n) for f in families]
        steps = "eval of " + a["eval_only_of"] if a.get("eval_only_of") else str(a["steps"])
        lines.append("| " + " | ".join([
            a["name"], f"`{a['method']}`", *fam, f"**{_pm(a['accuracy'], a['accuracy_std'], n)}**",
            f"{a['visual_tokens']:.1f}" if a["visual_tokens"] % 1 else f"{int(a['visual_tokens'])}",
            f"{a['percent_tokens']:.3f}", f"{a['tokdense']:.2f}", str(n), steps, _losses(a),
            f"{a['train_time_s']:.0f}", f"{a['eval_time_s']:.0f}"]) + " |")
    return "\n".join(lines) + "\n"


def _losses(a: Mapping) -> str:
    runs = a.get("per_seed") or []
    if not runs or "loss_first" not in runs[0]:
        return "—"
    return f"{np.mean([r['loss_first'] for r in runs]):.3f}→{np.mean([r['loss_last'] for r in runs]):.3f}"


def _margin(a: Mapping, b: Mapping, fams: Sequence[str]) -> tuple[float, float]:
    """Mean over ``fams`` of a's minus b's accuracy, and the combined seed spread."""
    d = np.mean([a["accuracy_by_family"][f] - b["accuracy_by_family"][f] for f in fams])
    s = math.sqrt(np.mean([a["accuracy_by_family_std"][f] ** 2 + b["accuracy_by_family_std"][f] ** 2 for f in fams]))
    return float(d), float(s)


def above_chance(a: Mapping, meta: Mapping) -> bool:
    """True when an arm's accuracy is more than 2 binomial standard errors above chance
    (1 / options) on ``meta["eval_examples"]`` questions (always True without that count)."""
    n = meta.get("eval_examples")
    if not n:
        return True
    p = 1.0 / meta.get("num_options", 4)
    return a["accuracy"] > p + 2 * math.sqrt(p * (1 - p) / n)


FULL_TARGET = "token dynamics at <= 0.1% of the tokens: overall accuracy >= 98% of the full-token model's"


def target_checks(arms: Sequence[Mapping], meta: Mapping) -> list[dict]:
    """The issue's targets as ``{"target", "measured", "status"}`` rows; status is
    "met", "missed" or "not measured" (with the reason in ``measured``).  Comparisons whose
    arms are all at chance level are "not measured": their margins are noise."""
    by = _by_name(arms)
    out = [] if not arms or any(above_chance(a, meta) for a in arms) else [{
        "target": "any arm above chance", "status": "missed",
        "measured": f"every arm is within 2 standard errors of chance on {meta.get('eval_examples')} questions; "
                    "the comparisons below are noise"}]
    chance = bool(out)
    full = next((a for a in arms if a["method"] == "none"), None)
    td_arms = [a for a in arms if a["method"] == "token_dynamics" and not a["cfg"].get("adaptive")]
    low = [a for a in td_arms if a["percent_tokens"] <= 0.1 + 1e-9]
    t1 = FULL_TARGET
    ref = meta.get("reference")
    if full is None and ref and ref.get("check"):
        r = ref["check"]
        out.append({"target": r["target"], "status": r["status"],
                    "measured": f"separate run in `{ref['dir']}/`: {r['measured']}"})
    elif not low or full is None:
        out.append({"target": t1, "status": "not measured",
                    "measured": "no token_dynamics arm at <= 0.1% or no full-token arm in this run"})
    else:
        best = max(low, key=lambda a: a["accuracy"])
        subset = full.get("eval_examples", 0) < best.get("eval_examples", 0) and "accuracy_subset" in best
        acc = (lambda a: a.get("accuracy_subset", a["accuracy"])) if subset else (lambda a: a["accuracy"])
        ratio = acc(best) / acc(full) if acc(full) else float("nan")
        seen_full = full["steps"] * full.get("batch_size", 1) + full.get("init_examples", 0)
        seen_best = best["steps"] * best.get("batch_size", 1)
        status = "met" if ratio >= 0.98 else "missed"
        above = [a for a in arms if a["method"] != "none" and not a.get("eval_only_of") and acc(a) > acc(full)]
        if seen_full < seen_best:
            status = "not measured"
            t1 += f" (the reference saw {seen_full} training examples vs {seen_best}: not a fair upper bound)"
        elif above:
            status = "not measured"
            names = ", ".join(f"`{a['name']}`" for a in sorted(above, key=lambda a: -acc(a)))
            t1 += (f" (the all-token reference scores below {names} on the same videos: at its training budget "
                   f"it is no upper bound, so the ratio says nothing about what the tokens cost)")
        if chance:
            status = "not measured"
        start = (f"; it starts from `{full['init_from']}`'s weights ({full['init_examples']:,} examples) and trains "
                 f"{full['steps']} steps x {full.get('batch_size', '?')} on all tokens" if full.get("init_from")
                 else f" ({full['steps']} steps)")
        on = f" on the first {full['eval_examples']} {meta.get('eval_split', 'eval')} videos" if subset else ""
        others = "".join(f"; {a['name']} ({a['percent_tokens']:.3f}%) {_pct(acc(a))}% = {100 * acc(a) / acc(full):.1f}%"
                         for a in td_arms if a is not best and acc(full))
        out.append({"target": t1, "status": status,
                    "measured": f"{best['name']} ({best['percent_tokens']:.3f}%): {_pct(acc(best))}% vs "
                                f"all tokens {_pct(acc(full))}%{on} = {100 * ratio:.1f}%{others}{start}"})
    head = by.get(HEADLINE)
    if head is None:
        out.append({"target": "motion questions", "status": "not measured", "measured": f"no {HEADLINE!r} arm"})
    else:
        fams = [f for f in MOTION_FAMILIES if f in head["accuracy_by_family"]]
        rivals = [a for a in arms if a["method"] not in ("none", "token_dynamics", "random_map", "random_base", "base_map")
                  and not a.get("eval_only_of")]
        for r in rivals:
            d, s = _margin(head, r, fams)
            same = abs(r["visual_tokens"] - head["visual_tokens"]) < 0.5
            t = f"token dynamics above `{r['name']}` on {'/'.join(fams)}" + ("" if same else
                                                                         f" ({r['name']} uses {r['visual_tokens']:.0f} tokens)")
            out.append({"target": t, "status": "not measured" if chance else ("met" if d > s and d > 0 else "missed"),
                        "measured": f"margin {100 * d:+.1f} points (seed spread ±{100 * s:.1f})"})
    fixed = [a for a in td_arms]
    for a in arms:
        if not a["cfg"].get("adaptive"):
            continue
        t = f"{a['name']}: accuracy within 1 point of the best fixed K, fewer tokens on average"
        if not fixed:
            out.append({"target": t, "status": "not measured", "measured": "no fixed-K arm"})
            continue
        best = max(fixed, key=lambda f: f["accuracy"])
        gap = 100 * (best["accuracy"] - a["accuracy"])
        ok = gap <= 1.0 and a["visual_tokens"] < best["visual_tokens"]
        out.append({"target": t, "status": "not measured" if chance else ("met" if ok else "missed"),
                    "measured": f"{_pct(a['accuracy'])}% with {a['visual_tokens']:.2f} tokens vs best fixed "
                                f"{best['name']} {_pct(best['accuracy'])}% with {best['visual_tokens']:.0f}"})
    e2e = meta.get("e2e_targets")   # experiments/benchmarks/e2e_bench.py's targets, if it ran
    if not e2e:
        out.append({"target": "LLM-side speed-up >= 100x and end to end >= 2x at 0.5B size", "status": "not measured",
                    "measured": "no e2e_bench.json next to these results: run experiments/benchmarks/e2e_bench.py"})
    for key, label in (("llm_side_100x", "LLM-side speed-up (compression + prefill vs full prefill) >= 100x"),
                       ("e2e_2x", "end-to-end speed-up with the vision tower >= 2x")):
        if e2e and key in e2e:
            t = e2e[key]
            out.append({"target": f"{label} at LLaVA-OV-0.5B size (e2e_bench.json)",
                        "status": "met" if t["met"] else "missed",
                        "measured": f"{t['time']:.1f}x by wall time, {t['flops']:.1f}x by FLOPs"})
    return out



def ladder_table(arms: Sequence[Mapping]) -> tuple[str, str]:
    """The paper's ablation ladder next to ours, and a sentence on whether the ordering holds."""
    by = _by_name(arms)
    lines = ["| rung | our arm | ours (%) | paper (%) |", "|---|---|---|---|"]
    ours, paper = [], []
    for rung, name, p in PAPER_LADDER:
        a = by.get(name) if name else None
        if name is None:
            lines.append(f"| {rung} | — | not run: no compressor feeds base + map to the LLM without the attention | {p} |")
            continue
        if a is None:
            lines.append(f"| {rung} | `{name}` | not in this run | {p} |")
            continue
        lines.append(f"| {rung} | `{name}` | {_pm(a['accuracy'], a['accuracy_std'], len(a['seeds']))} | {p} |")
        ours.append((rung, a["accuracy"]))
        paper.append((rung, p))
    if len(ours) < 2:
        return "\n".join(lines) + "\n", "Too few rungs ran to compare the ordering."
    o = [r for r, _ in sorted(ours, key=lambda x: -x[1])]
    q = [r for r, _ in sorted(paper, key=lambda x: -x[1])]
    same = o == q
    sent = (f"Ordering, best first — ours: {' > '.join(o)}; paper: {' > '.join(q)}. "
            + ("The same ordering holds in the miniature." if same else "The ordering differs from the paper's."))
    return "\n".join(lines) + "\n", sent


def _videos(n: int | None, meta: Mapping) -> str:
    """'all 768 test videos' or 'the first 192 test videos' (n of meta's eval videos)."""
    split = meta.get("eval_split", "eval")
    return f"all {n:,} {split} videos" if n == meta.get("eval_examples") else f"the first {n} {split} videos"


def _setup_sentence(arms: Sequence[Mapping], meta: Mapping) -> str:
    t, d = meta["train"], meta.get("data", {})
    none = next((a for a in arms if a["method"] == "none"), None)
    fams = ", ".join(meta["families"])
    other = meta.get("reference")
    if none:
        ref = ((f"the all-token reference starts from `{none['init_from']}`'s trained weights and trains "
                if none.get("init_from") else "the all-token reference trains ")
               + f"{none['steps']} steps x {none.get('batch_size', '?')} (about "
               f"{round(meta['n_tokens'] / (meta['budget'] + 1))}x longer sequences) and is scored on "
               + _videos(none.get("eval_examples", meta["eval_examples"]), meta))
    elif other:
        ref = (f"the all-token reference (row marked{REFERENCE_MARK}) ran separately in `{other['dir']}/` and is "
               f"scored on " + _videos(other["none"].get("eval_examples"), meta))
    else:
        ref = "the all-token reference is not in this run (it is in `--config.full=True`)"
    cur = f" The first {t['curriculum'].rpartition(':')[2]} steps draw only `{t['curriculum'].rpartition(':')[0]}` " \
          f"questions (a curriculum, the same for every arm)." if t.get("curriculum") else ""
    fmt = ("each option's words are scored by their likelihood and the likeliest wins"
           if d.get("answer_format", "letter") == "text" else "the option letter with the highest logit wins")
    return (f"`{meta['dataset']}` (families: {fams}): {meta['train_examples']:,} training videos, "
            f"{meta['eval_examples']:,} {meta['eval_split']} videos; {meta['token_grid'][0]} frames x "
            f"{meta['token_grid'][1]}x{meta['token_grid'][2]} frozen patch tokens = **{meta['n_tokens']:,} tokens per "
            f"video**; compressed arms get **{meta['budget']} visual tokens ({meta['budget_percent']:.3f}%)** unless "
            f"the row says otherwise. Tiny Qwen2-style decoder ({meta['model']['num_layers']} layers, width "
            f"{meta['model']['hidden_size']}) trained from scratch, {t['steps']} steps x {t['batch_size']} for every "
            f"compressed arm; {ref}.{cur} Multiple choice: {fmt}. Accuracy in %, chance = 25%; mean ± sample std "
            f"over seeds where there are several. Total wall time {meta['total_time_s'] / 60:.1f} min on "
            f"{meta['cpu_count']} CPU cores.")


REFERENCE_MARK = " †"


def _separate_reference(arms: Sequence[Mapping], meta: Mapping) -> Mapping | None:
    """``meta["reference"]`` (a separate run's all-token arm) when this run has no all-token arm."""
    ref = meta.get("reference")
    if any(a["method"] == "none" for a in arms) or not ref or not isinstance(ref.get("none"), Mapping):
        return None
    return ref


def display_arms(arms: Sequence[Mapping], meta: Mapping) -> list[Mapping]:
    """The arms to tabulate and plot: this run's, plus the all-token reference of a separate
    run (``meta["reference"]``, name marked with a dagger) when this run has none."""
    ref = _separate_reference(arms, meta)
    if ref is None:
        return list(arms)
    return [*arms, {**ref["none"], "name": ref["none"]["name"] + REFERENCE_MARK, "reference_dir": ref["dir"]}]


def reference_notes(arms: Sequence[Mapping], meta: Mapping) -> list[str]:
    """Notes on a separate reference run: how its all-token arm was trained and scored, and
    whether the arms both runs share scored the same (the runs are deterministic, so they should)."""
    ref = _separate_reference(arms, meta)
    if ref is None:
        return []
    n = ref["none"]
    start = (f"starts from `{n['init_from']}`'s trained weights ({n.get('init_examples', 0):,} examples) and trains "
             f"{n['steps']} steps x {n.get('batch_size', '?')} on all {int(n['visual_tokens']):,} tokens"
             if n.get("init_from") else f"trains {n['steps']} steps x {n.get('batch_size', '?')} from scratch")
    some = n.get("eval_examples") != meta.get("eval_examples")
    out = [f"- `{n['name']}{REFERENCE_MARK}`: from the separate run in `{ref['dir']}/` (its command is in "
           f"experiments/motion_qa.py); it {start}, and is scored on {_videos(n.get('eval_examples'), meta)}"
           + (" only (its per-family numbers are on those videos)" if some else "")
           + ". The ≥ 98% target compares with token dynamics on the same videos, within that run."]
    mine = _by_name(arms)
    diff = [f"`{name}` {_pct(r['accuracy'])}% there vs {_pct(mine[name]['accuracy'])}% here"
            for name, r in sorted((ref.get("arms") or {}).items())
            if name in mine and r.get("accuracy") is not None and abs(r["accuracy"] - mine[name]["accuracy"]) > 1e-9]
    same = [name for name in (ref.get("arms") or {}) if name in mine]
    if diff:
        out.append(f"- The reference run and this run disagree on shared arms ({'; '.join(diff)}): they ran with "
                   f"different settings or code, so the reference comparison is not about this run's arms.")
    elif same:
        out.append(f"- The arms both runs trained ({', '.join(f'`{x}`' for x in same)}) scored identically in both.")
    return out


def _body(arms: Sequence[Mapping], meta: Mapping, img: str, h: str) -> list[str]:
    lines = [_setup_sentence(arms, meta), "", results_table(display_arms(arms, meta), list(meta["families"]))]
    notes = [f"- `{a['name']}`: {a['note']}" for a in arms if a.get("note")]
    notes += reference_notes(arms, meta)
    notes += [f"- `{a['name']}` evaluates the weights of `{a['eval_only_of']}` with K chosen per video "
              f"(k_max = {a['budget']})." for a in arms if a.get("eval_only_of")]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    lines += [f"{h} Targets", "", "| target | measured | status |", "|---|---|---|"]
    for chk in target_checks(arms, meta):
        lines.append(f"| {chk['target']} | {chk['measured']} | **{chk['status']}** |")
    lad, sent = ladder_table(arms)
    lines += ["", f"{h} The paper's ablation ladder", "", lad, sent, ""]
    lines += [f"{h} Plots", "", f"![accuracy vs tokens]({img}{RESULT_FILES['plot']})", "",
              f"![example]({img}{RESULT_FILES['example']})", "", f"![adaptive K]({img}{RESULT_FILES['adaptive']})", ""]
    return lines


def markdown(arms: Sequence[Mapping], meta: Mapping) -> str:
    return "\n".join(["# Motion QA: token reduction in miniature", "", *_body(arms, meta, "", "##")])


README_BEGIN = "<!-- motion_qa results: begin (written by python -m launch.motion_qa --report_only --readme=README.md) -->"
README_END = "<!-- motion_qa results: end -->"


def update_readme(readme: str, results_dir: str) -> None:
    """Replaces the text between ``README_BEGIN`` and ``README_END`` in ``readme`` by the
    tables and plots of ``results_dir/motion_qa.json`` (+ ``_meta.json``)."""
    with open(os.path.join(results_dir, "motion_qa.json")) as f:
        arms = json.load(f)
    with open(os.path.join(results_dir, "motion_qa_meta.json")) as f:
        meta = json.load(f)
    with open(readme) as f:
        text = f.read()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        raise ValueError(f"{readme}: no '{README_BEGIN}' ... '{README_END}' block to replace")
    img = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(readme)) or ".").rstrip("/") + "/"
    block = "\n".join(["", *_body(arms, meta, img, "####")])
    with open(readme, "w") as f:
        f.write(text[:i + len(README_BEGIN)] + block + text[j:])


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_vs_tokens(arms: Sequence[Mapping], path: str) -> None:
    """Accuracy (%) vs % of tokens kept, log x, one marker per arm with seed error bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = plt.get_cmap("tab20" if len(arms) > 10 else "tab10")
    for i, a in enumerate(arms):
        x, y, e = a["percent_tokens"], 100 * a["accuracy"], 100 * a["accuracy_std"]
        m = "*" if a["method"] == "token_dynamics" else ("s" if a["method"] == "none" else "o")
        ax.errorbar([x], [y], yerr=[e], fmt=m, ms=10 if m == "*" else 7, capsize=3, label=a["name"],
                    color=colors(i % colors.N))
    ax.axhline(25.0, color="grey", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("visual tokens fed to the LLM (% of all tokens, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Motion QA: accuracy vs tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_example(example: Mapping[str, Any], path: str, n_frames: int = 6) -> None:
    """One video: frames on top, its token dynamics map below, question and answers by arm."""
    plt = _plt()
    frames = np.asarray(example["frames"])
    dmap = example.get("dynamics_map")
    t = frames.shape[0]
    idx = np.linspace(0, t - 1, min(n_frames, t)).round().astype(int)
    rows = 2 if dmap is not None else 1
    fig, axes = plt.subplots(rows + 1, len(idx), figsize=(2 * len(idx), 2 * rows + 1.3),
                             gridspec_kw={"height_ratios": [1] * rows + [0.6]})
    axes = np.asarray(axes).reshape(rows + 1, len(idx))
    cmap = plt.get_cmap("tab20", max(int(example.get("k") or 1), 1))
    for j, f in enumerate(idx):
        axes[0, j].imshow(frames[f])
        axes[0, j].set_title(f"frame {f}", fontsize=8)
        if dmap is not None:
            axes[1, j].imshow(np.asarray(dmap)[f], cmap=cmap, vmin=-0.5, vmax=max(int(example["k"]), 1) - 0.5,
                              interpolation="nearest")
            axes[1, j].set_title(f"dynamics map {f}", fontsize=8)
    for ax in axes[:rows].ravel():
        ax.set_xticks([]), ax.set_yticks([])
    gs = axes[rows, 0].get_gridspec()
    for ax in axes[rows]:
        ax.remove()
    tax = fig.add_subplot(gs[rows, :])
    tax.axis("off")
    letters = "ABCDEFGH"
    opts = "   ".join(f"{letters[i]}. {o}" for i, o in enumerate(example["options"]))
    ans = example["answer"]
    preds = example["predictions"]
    pl = "; ".join(f"{n}: {letters[p]}{'✓' if p == ans else '✗'}" for n, p in preds.items())
    text = (f"Q: {example['question']}\n{opts}\ncorrect: {letters[ans]}   (K = {example.get('k')} clusters)\n"
            + _wrap("model answers (seed 0) — " + pl, 120))
    tax.text(0.0, 1.0, text, va="top", ha="left", fontsize=8, family="monospace")
    fig.suptitle(f"test video {example['id']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(s: str, width: int) -> str:
    out, line = [], ""
    for word in s.split(" "):
        if len(line) + len(word) + 1 > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    return "\n".join(out)


def plot_adaptive_k(k_counts: Mapping[str, Sequence[int]], path: str) -> None:
    """Histogram of the K chosen per video by each adaptive method (``counts[k]`` videos chose k)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    names = list(k_counts)
    if not names:
        ax.text(0.5, 0.5, "no adaptive arm in this run", ha="center", va="center")
        ax.axis("off")
    width = 0.8 / max(len(names), 1)
    for i, n in enumerate(names):
        c = np.asarray(k_counts[n], float)
        ks = np.arange(len(c))
        mean = float((ks * c).sum() / max(c.sum(), 1))
        ax.bar(ks + (i - (len(names) - 1) / 2) * width, c, width=width, label=f"{n} (mean K {mean:.2f})")
    if names:
        ax.set_xlabel("K chosen (visual tokens)")
        ax.set_ylabel("test videos")
        ax.set_title("Adaptive K per video")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


RESULT_FILES = {"json": "motion_qa.json", "meta": "motion_qa_meta.json", "md": "motion_qa.md",
                "plot": "accuracy_vs_tokens.png", "example": "example_dynamics.png", "adaptive": "adaptive_k.png"}


def result_paths(results_dir: str) -> dict[str, str]:
    """{what: path} of a run's files in ``results_dir`` (names in ``RESULT_FILES``)."""
    return {k: os.path.join(results_dir, v) for k, v in RESULT_FILES.items()}


def write_report(results_dir: str, arms: Sequence[Mapping], meta: Mapping) -> dict[str, str]:
    """What is rendered from the arms and meta alone: the meta JSON with the target checks,
    the markdown and the accuracy plot (a finished run's are re-rendered by --report_only)."""
    paths = result_paths(results_dir)
    with open(paths["meta"], "w") as f:
        json.dump(_jsonable({**meta, "checks": target_checks(arms, meta)}), f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(markdown(arms, meta))
    plot_accuracy_vs_tokens(display_arms(arms, meta), paths["plot"])
    return paths


def write_all(results_dir: str, arms: Sequence[Mapping], meta: Mapping, *, example: Mapping | None = None,
              adaptive_k: Mapping[str, Sequence[int]] | None = None) -> dict[str, str]:
    """Writes the JSON, markdown and plots; returns {what: path}."""
    os.makedirs(results_dir, exist_ok=True)
    paths = result_paths(results_dir)
    with open(paths["json"], "w") as f:
        json.dump(_jsonable(list(arms)), f, indent=1)
    write_report(results_dir, arms, meta)
    if example is not None:
        plot_example(example, paths["example"])
    plot_adaptive_k(adaptive_k or {}, paths["adaptive"])
    return paths
