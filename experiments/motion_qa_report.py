"""The motion-QA report: reads the sweep's run directories and writes the results.

    write(plan, workdir, results_dir, readme)   # plan = experiments.motion_qa.plan(arg)

Every number comes from the runs' own files (``done.json``, ``eval_<split>_<step>.json``,
``eval_<split>_<step>.predictions.jsonl``, ``metrics.jsonl``, ``config.json``), so a report
can be rebuilt at any time from the runs.  Written to ``results_dir``: ``motion_qa.json``
(one object per arm: the contract fields of issue 14 — name, method, cfg, visual_tokens,
percent_tokens, accuracy(_std), accuracy_by_family(_std), seeds, per_seed[{seed, accuracy,
accuracy_by_family, workdir}], steps, batch_size, train_examples, eval_examples, init_from,
eval_only_of, tokdense — and more), ``motion_qa_meta.json`` (settings + target checks),
``motion_qa.md`` and the plots.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Any, Mapping, Sequence

import numpy as np

from td_jax.data import moving_shapes as ms
from td_jax.eval import report as rep
from td_jax.train import sweep

FILES = {"json": "motion_qa.json", "meta": "motion_qa_meta.json", "md": "motion_qa.md",
         "plot": "accuracy_vs_tokens.png", "families": "accuracy_by_family.png",
         "example": "example_dynamics.png", "adaptive": "adaptive_k.png"}
README_BEGIN = "<!-- motion_qa results: begin (written by python -m launch.motion_qa --report_only --readme=README.md) -->"
README_END = "<!-- motion_qa results: end -->"

HEADLINE = "token_dynamics"
MOTION = ("direction", "order")
RIVALS = ("base_only", "tome", "prune", "pool", "vidtome", "dycoke", "fastvid", "visionzip", "holitom")
# The paper's ablation ladder (NextQA-MC %, 32 tokens): (rung, our arm, paper accuracy).
PAPER_LADDER = (
    ("base only", "base_only", 35.2),
    ("base + map without attention", "base_map", 38.9),
    ("random map", "random_map", 46.9),
    ("random base", "random_base", 37.7),
    ("full method", "token_dynamics", 57.5),
)
CHANCE = 1.0 / ms.NUM_OPTIONS   # every question has NUM_OPTIONS options
PLATEAU_DROP = 0.03     # the reference's train loss has plateaued when its last fifth is < 3% below the fifth before


# ----------------------------------------------------------------------------- reading the runs


def read_run(run_dir: str) -> dict | None:
    """A finished run's final evaluations, predictions, losses and timing, or None."""
    from td_jax.train import metrics as metrics_lib
    from td_jax.train import trainer

    done = trainer.read_done(run_dir)
    if done is None:
        return None
    step = int(done["step"])
    out: dict[str, Any] = {"dir": run_dir, "step": step, "eval": {}, "predictions": {}}
    for split in ("validation", "test"):
        paths = trainer.eval_paths(run_dir, split, step)
        if not os.path.isfile(paths["json"]):
            continue
        with open(paths["json"]) as f:
            out["eval"][split] = json.load(f)["metrics"]
        preds = []
        if os.path.isfile(paths["predictions"]):
            with open(paths["predictions"]) as f:
                preds = [json.loads(line) for line in f if line.strip()]
        out["predictions"][split] = preds
    with open(os.path.join(run_dir, "config.json")) as f:
        out["config"] = json.load(f)
    recs = [r for r in metrics_lib.read_metrics(run_dir) if "loss" in r]
    losses = [r["loss"] for r in recs]
    out["losses"] = losses
    tenth = max(1, len(losses) // 10)
    out["loss_first"] = float(np.mean(losses[:tenth])) if losses else float("nan")
    out["loss_last"] = float(np.mean(losses[-tenth:])) if losses else float("nan")
    prev, secs = 0, 0.0
    for r in recs:
        if r.get("steps_per_sec"):
            secs += (r["step"] - prev) / r["steps_per_sec"]
        prev = r["step"]
    out["train_time_s"] = secs
    return out


def finished(run: Mapping | None) -> bool:
    """A run the report can use: done, with its test-split evaluation."""
    return bool(run) and "test" in run["eval"]


def run_dir(workdir: str, arm: str, seed: int) -> str:
    """The directory of one run of the grid (``get_sweep`` names them ``<arm>_s<seed>``)."""
    return os.path.join(workdir, f"{arm}_s{seed}")


# The grid settings the report states, as each run's own config.json holds them.
RUN_SETTINGS = {"steps": ("total_steps",), "batch": ("batch_size",), "layers": ("task", "llm", "num_layers"),
                "dim": ("task", "llm", "hidden_size"), "mlp": ("task", "llm", "intermediate_size"),
                "heads": ("task", "llm", "num_heads"), "kv_heads": ("task", "llm", "num_kv_heads"),
                "curriculum": ("task", "data", "curriculum"), "lr": ("optim", "lr")}


def run_settings(run: Mapping) -> dict:
    """What the report's header states about training, read from a run's own config (so a
    ``--config.KEY=VALUE`` override given to the job shows in the report as it was run)."""
    out = {}
    for key, path in RUN_SETTINGS.items():
        node = run["config"]
        for p in path:
            node = node[p]
        out[key] = node
    return out


def grid_settings(plan_settings: Mapping, runs: Sequence[Mapping]) -> dict:
    """The plan's settings with the trained runs' own values; every trained run (eval-only
    runs have no training) must agree, else the arms were not trained alike: ValueError."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in plan_settings.items()}
    trained = [r for r in runs if int(r["config"]["total_steps"]) > 0]
    seen = {}
    for r in trained:
        for k, v in run_settings(r).items():
            seen.setdefault(k, {}).setdefault(json.dumps(v), []).append(os.path.basename(r["dir"]))
    differ = {k: {json.loads(v): names for v, names in vals.items()} for k, vals in seen.items() if len(vals) > 1}
    if differ:
        raise ValueError(f"the grid's runs were not trained alike: {differ}")
    out.update({k: json.loads(next(iter(vals))) for k, vals in seen.items()})
    return out


def _family_accs(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in metrics.items()
            if k.startswith("accuracy/") and metrics.get("count/" + k.split("/", 1)[1], 0) > 0}


def scored(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` with ``accuracy`` / ``count`` over the scored families only: a control family
    (``moving_shapes.CONTROL_FAMILIES``: the asked object alone) keeps its own
    ``accuracy/<family>`` but stays out of "all"."""
    out = dict(metrics)
    fams = {f: int(metrics.get(f"count/{f}", 0)) for f in _family_accs(metrics)}
    if any(f in ms.CONTROL_FAMILIES for f in fams):
        kept = {f: n for f, n in fams.items() if f not in ms.CONTROL_FAMILIES}
        total = sum(kept.values())
        out["count"] = float(total)
        out["accuracy"] = (sum(metrics[f"accuracy/{f}"] * n for f, n in kept.items()) / total if total
                           else float("nan"))
    return out


def _rel(path: str, results_dir: str) -> str:
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(results_dir))
    return rel if not rel.startswith("..") else os.path.abspath(path)


def summarize_arm(arm: dict, runs: list[dict], n_full: int, results_dir: str) -> dict:
    """The contract record of one arm (a ``plan`` arm) from its finished runs (one per seed)."""
    test = [scored(r["eval"]["test"]) for r in runs]
    val = [scored(r["eval"].get("validation", {})) for r in runs]
    fams = list(_family_accs(test[0]))
    acc, acc_std = rep.mean_std([t["accuracy"] for t in test])
    n_test = int(test[0]["count"])
    vt = [p["visual_tokens"] for p in runs[0]["predictions"].get("test", []) if "visual_tokens" in p]
    visual = float(np.mean(vt)) if vt else float("nan")
    cfg = runs[0]["config"]
    fam_ms = {f: rep.mean_std([_family_accs(t)[f] for t in test]) for f in fams}
    out = {
        "name": arm["name"], "label": arm["label"], "method": arm["compressor"],
        "cfg": arm["cfg"], "budget": arm["budget"],
        "visual_tokens": visual, "percent_tokens": 100.0 * visual / n_full, "n_tokens_full": n_full,
        "accuracy": acc, "accuracy_std": acc_std,
        "accuracy_se": rep.standard_error([t["accuracy"] for t in test], n_test),
        "accuracy_by_family": {f: m for f, (m, _) in fam_ms.items()},
        "accuracy_by_family_std": {f: sd for f, (_, sd) in fam_ms.items()},
        "accuracy_by_family_n": {f: int(test[0].get(f"count/{f}", 0)) for f in fams},
        "val_accuracy": rep.mean_std([v.get("accuracy", float("nan")) for v in val])[0],
        "val_examples": int(val[0].get("count", 0)) if val[0] else 0,
        "seeds": [int(r["config"]["seed"]) for r in runs],
        "per_seed": [{"seed": int(r["config"]["seed"]), "accuracy": t["accuracy"],
                      "accuracy_by_family": _family_accs(t),
                      "val_accuracy": v.get("accuracy"),
                      "loss_first": r["loss_first"], "loss_last": r["loss_last"],
                      "train_time_s": r["train_time_s"], "workdir": _rel(r["dir"], results_dir)}
                     for r, t, v in zip(runs, test, val)],
        "steps": int(cfg["total_steps"]), "batch_size": int(cfg["batch_size"]),
        "train_examples": int(cfg["total_steps"]) * int(cfg["batch_size"]),
        "eval_examples": n_test, "init_from": arm["eval_of"] and f"{arm['eval_of']} (same seed)",
        "eval_only_of": arm["eval_of"],
        "tokdense": 100.0 * acc / visual if visual else float("nan"),
        "train_time_s": float(sum(r["train_time_s"] for r in runs)),
    }
    out.update(chance_flags(out))
    if arm["cfg"].get("adaptive"):
        k_max = out["budget"]
        counts = np.bincount(np.asarray(vt, int), minlength=k_max + 1).tolist()
        out["k_hist"] = counts
        out["share_below_kmax"] = float(np.mean(np.asarray(vt) < k_max)) if vt else float("nan")
    return out


def chance_flags(arm: Mapping) -> dict:
    """``above_chance`` (all questions) and ``above_chance_by_family`` of an arm record: its
    per-seed test accuracies against chance beyond 2 SE (seed spread and binomial error)."""
    per = arm["per_seed"]
    return {"above_chance": rep.above_chance([p["accuracy"] for p in per], arm["eval_examples"], CHANCE)["sign"] > 0,
            "above_chance_by_family": {
                f: rep.above_chance([p["accuracy_by_family"][f] for p in per], arm["accuracy_by_family_n"][f],
                                    CHANCE)["sign"] > 0 for f in arm["accuracy_by_family"]}}


def collect(plan: Mapping, workdir: str, results_dir: str) -> tuple[list[dict], dict]:
    """(arm records, meta) from the finished runs of the plan's grid under ``workdir``."""
    s = plan["settings"]
    arms, missing, all_runs = [], [], []
    for arm in plan["arms"]:
        runs = []
        for seed in arm["seeds"]:
            r = read_run(run_dir(workdir, arm["name"], seed))
            (runs.append(r) if finished(r) else missing.append(f"{arm['name']}_s{seed}"))
        if runs:
            arms.append(summarize_arm(arm, runs, plan["n_tokens"], results_dir))
            all_runs += runs
    if not arms:
        raise FileNotFoundError(f"no finished motion-QA runs in {workdir} (run the main job first)")
    wall = sweep.read_wall_time(workdir) or {}
    first = arms[0]
    meta = {
        "dataset": s["dataset"], "families": list(first["accuracy_by_family"]),
        "eval_split": "test", "eval_examples": first["eval_examples"], "val_examples": first["val_examples"],
        "n_tokens": plan["n_tokens"], "token_grid": [s["frames"], s["resolution"] // s["patch"],
                                                     s["resolution"] // s["patch"]],
        "budget": s["budget"], "budget_percent": 100.0 * s["budget"] / plan["n_tokens"],
        "settings": grid_settings(s, all_runs), "arg": plan["arg"],
        "missing_runs": missing, "wall_time_s": wall.get("total_s"), "invocations": wall.get("invocations"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "cpu_flags": _cpu_flags(),
                    "load_average": list(os.getloadavg())},
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    e2e = os.path.join(results_dir, "e2e_bench.json")
    if os.path.isfile(e2e):
        with open(e2e) as f:
            meta["e2e_targets"] = json.load(f).get("summary", {}).get("targets")
    meta["reference_check"] = reference_check(arms, meta, workdir)
    return arms, meta


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        return " ".join(x for x in flags if x.startswith(("avx", "fma", "amx")))
    except OSError:
        return ""


# ----------------------------------------------------------------------------- checks


def _by(arms):
    return {a["name"]: a for a in arms}


def _accs(a: Mapping, family: str | None = None, split: str = "test") -> list[float]:
    if split == "validation":
        return [p["val_accuracy"] for p in a["per_seed"]]
    if family is None:
        return [p["accuracy"] for p in a["per_seed"]]
    return [p["accuracy_by_family"][family] for p in a["per_seed"]]


def _m(a, b, meta, family=None, offset=0.0, split="test"):
    n = (a["accuracy_by_family_n"][family] if family else meta["eval_examples"]) if split == "test" \
        else meta["val_examples"]
    return rep.margin(_accs(a, family, split), _accs(b, family, split), n, offset)


def _fmt_margin(m: Mapping) -> str:
    mark = {1: "above", -1: "below", 0: "tie"}[m["sign"]]
    return f"{100 * m['diff']:+.1f} ± {200 * m['se']:.1f} ({mark})"


def reference_check(arms: Sequence[Mapping], meta: Mapping, workdir: str) -> dict:
    """Is the all-token arm an upper bound?  On the validation split it must not be
    significantly below any compressed arm, and its train loss must have plateaued."""
    by = _by(arms)
    full = by.get("none")
    if full is None:
        return {"valid": False, "reason": "no all-token arm in this run"}
    below = [a["name"] for a in arms if a is not full and _m(full, a, meta, split="validation")["sign"] < 0]
    drops = []
    for seed in full["seeds"]:
        run = read_run(run_dir(workdir, full["name"], seed))
        losses = run["losses"] if run else []
        k = max(1, len(losses) // 5)
        if len(losses) >= 2 * k:
            prev, last = float(np.mean(losses[-2 * k:-k])), float(np.mean(losses[-k:]))
            drops.append((prev - last) / max(prev, 1e-9))
    plateau = bool(drops) and max(drops) < PLATEAU_DROP
    reasons = []
    if not full["above_chance"]:
        reasons.append(f"it does not learn the task: {rep.pct(full['accuracy'])}% on the test split is within "
                       f"2 SE of chance ({rep.pct(CHANCE)}%)")
    if below:
        reasons.append(f"on the validation split it scores significantly below {below}")
    if not plateau:
        reasons.append("its train loss had not plateaued (last fifth of training "
                       + (f"{100 * max(drops):.1f}% below the fifth before" if drops else "not logged") + ")")
    return {"valid": not reasons, "below": below, "loss_drop_last_fifth": drops, "plateau": plateau,
            "reason": "; ".join(reasons)}


def target_checks(arms: Sequence[Mapping], meta: Mapping) -> list[dict]:
    """The issue's targets as {"target", "measured", "status"} rows (met / missed / not measured)."""
    by = _by(arms)
    out = []
    ref = meta["reference_check"]
    full, head = by.get("none"), by.get(HEADLINE)
    low = [a for a in arms if a["method"] == "token_dynamics" and not a["cfg"].get("adaptive")
           and a["percent_tokens"] <= 0.1 + 1e-9]
    t = "token dynamics at <= 0.1% of the tokens reaches >= 98% of the all-token model's accuracy"
    if full is None or not low:
        out.append({"target": t, "status": "not measured", "measured": "no all-token arm or no arm at <= 0.1%"})
    else:
        best = max(low, key=lambda a: a["accuracy"])
        m = _m(best, full, meta, offset=-0.02)
        ratio = best["accuracy"] / full["accuracy"] if full["accuracy"] else float("nan")
        text = (f"{best['label']} ({best['percent_tokens']:.3f}%): {rep.pct(best['accuracy'])}% vs all tokens "
                f"{rep.pct(full['accuracy'])}% = {100 * ratio:.1f}%; margin over 98% {_fmt_margin(m)}")
        if not ref["valid"]:
            out.append({"target": t, "status": "not measured", "measured": f"reference failed: {ref['reason']}. "
                                                                          + text})
        else:
            out.append({"target": t, "status": "met" if m["sign"] > 0 else "missed", "measured": text})
    if head is not None:
        for r in [by[n] for n in RIVALS if n in by]:
            fams = [f for f in MOTION + ms.CONTROL_FAMILIES if f in head["accuracy_by_family"]]
            parts = [f"all {_fmt_margin(_m(head, r, meta))}"] + [f"{f} {_fmt_margin(_m(head, r, meta, f))}"
                                                                 for f in fams]
            m = _m(head, r, meta)
            out.append({"target": f"token dynamics above {r['label']} at {r['visual_tokens']:.0f} tokens "
                                  f"(all questions)",
                        "status": "met" if m["sign"] > 0 else "missed", "measured": "; ".join(parts)})
        for a in [x for x in arms if x["cfg"].get("adaptive")]:
            m = _m(a, head, meta)
            saves = a["visual_tokens"] < head["visual_tokens"] - 1e-9
            ok = saves and m["sign"] >= 0
            # "no significant loss" says nothing when the fixed-K arm itself is at chance
            status = "not measured" if not head["above_chance"] else "met" if ok else "missed"
            out.append({"target": f"{a['label']}: fewer tokens than fixed K={head['budget']} without a "
                                  f"significant accuracy loss",
                        "status": status,
                        "measured": f"mean K {a['visual_tokens']:.2f} of {a['budget']} "
                                    f"({100 * a.get('share_below_kmax', float('nan')):.0f}% of videos below k_max); "
                                    f"{rep.pct(a['accuracy'])}% vs {rep.pct(head['accuracy'])}%: {_fmt_margin(m)}"
                                    + ("" if head["above_chance"] else f"; fixed K={head['budget']} is at chance, "
                                       "so no loss can show")})
        if "paper_attention" in by:
            p = by["paper_attention"]
            m = _m(head, p, meta)
            out.append({"target": "our cross-dynamics attention (trajectory tokens) above the paper's form "
                                  "(values from an MLP of the map)",
                        "status": "met" if m["sign"] > 0 else "missed", "measured": _fmt_margin(m)})
    e2e = meta.get("e2e_targets")
    for key, label in (("llm_side_100x", "LLM-side speed-up (compression + prefill vs full prefill) >= 100x"),
                       ("e2e_2x", "end-to-end speed-up with the vision tower >= 2x")):
        if e2e and key in e2e:
            t = e2e[key]
            out.append({"target": f"{label} at LLaVA-OV-0.5B size (e2e_bench.json)",
                        "status": "met" if t["met"] else "missed",
                        "measured": f"{t['time']:.1f}x by wall time, {t['flops']:.1f}x by FLOPs"})
    return out


def comparison_table(arms: Sequence[Mapping], meta: Mapping) -> str:
    """Token dynamics minus each other arm, per family and overall (points ± 2 SE)."""
    by = _by(arms)
    head = by.get(HEADLINE)
    if head is None:
        return ""
    fams = list(meta["families"])
    rows = []
    for a in arms:
        if a is head or a["method"] == "none":
            continue
        rows.append([a["label"]] + [_fmt_margin(_m(head, a, meta, f)) for f in fams] + [_fmt_margin(_m(head, a, meta))])
    full = by.get("none")
    if full is not None:
        rows.append([f"{full['label']} (upper bound)"] + [_fmt_margin(_m(head, full, meta, f)) for f in fams]
                    + [_fmt_margin(_m(head, full, meta))])
    return rep.table(["token dynamics minus", *fams, "all"], rows)


def ladder_table(arms: Sequence[Mapping], meta: Mapping) -> tuple[str, str]:
    by = _by(arms)
    rows, ours, paper = [], [], []
    for rung, name, p in PAPER_LADDER:
        a = by.get(name)
        if a is None:
            rows.append([rung, f"`{name}`", "not in this run", p])
            continue
        rows.append([rung, f"`{name}`", rep.pm(a["accuracy"], a["accuracy_std"], len(a["seeds"])), p])
        ours.append((rung, a))
        paper.append((rung, p))
    if len(ours) < 2:
        return rep.table(["rung", "our arm", "ours (%)", "paper (%)"], rows), "Too few rungs ran to compare."
    o = sorted(ours, key=lambda x: -x[1]["accuracy"])
    ties = [f"{o[i][0]} ≈ {o[i + 1][0]}" for i in range(len(o) - 1) if _m(o[i][1], o[i + 1][1], meta)["sign"] == 0]
    q = [r for r, _ in sorted(paper, key=lambda x: -x[1])]
    sent = (f"Ordering, best first — ours: {' > '.join(r for r, _ in o)}; paper: {' > '.join(q)}. "
            + ("Same ordering as the paper. " if [r for r, _ in o] == q else "The ordering differs from the paper's. ")
            + (f"Not separable within 2 SE: {'; '.join(ties)}." if ties else "Every neighbour pair is separated by "
               "more than 2 SE."))
    return rep.table(["rung", "our arm", "ours (%)", "paper (%)"], rows), sent


# ----------------------------------------------------------------------------- writing


def results_table(arms: Sequence[Mapping], meta: Mapping) -> str:
    fams = list(meta["families"])
    head = ["arm", "method", *fams, "**all**", "validation", "visual tokens", "% tokens", "TokDense", "seeds",
            "steps x batch", "train loss first→last", "train s / seed"]
    rows = []
    for a in arms:
        n = len(a["seeds"])
        losses = [p for p in a["per_seed"] if not math.isnan(p["loss_first"])]
        loss = (f"{np.mean([p['loss_first'] for p in losses]):.3f}→{np.mean([p['loss_last'] for p in losses]):.3f}"
                if losses else "—")
        steps = f"eval of `{a['eval_only_of']}`" if a["eval_only_of"] else f"{a['steps']} x {a['batch_size']}"
        rows.append([a["label"], f"`{a['method']}`",
                     *[rep.pm(a["accuracy_by_family"][f], a["accuracy_by_family_std"][f], n) for f in fams],
                     f"**{rep.pm(a['accuracy'], a['accuracy_std'], n)}**", rep.pct(a["val_accuracy"]),
                     f"{a['visual_tokens']:.2f}".rstrip("0").rstrip("."), f"{a['percent_tokens']:.3f}",
                     f"{a['tokdense']:.2f}", n, steps, loss, f"{a['train_time_s'] / max(n, 1):.0f}"])
    return rep.table(head, rows)


def setup_text(arms: Sequence[Mapping], meta: Mapping) -> str:
    s = meta["settings"]
    wall = meta.get("wall_time_s")
    by = _by(arms)
    full = by.get("none")
    control = [f for f in meta["families"] if f in ms.CONTROL_FAMILIES]
    return (f"`{meta['dataset']}` (families: {', '.join(f for f in meta['families'] if f not in control)}"
            + (f"; control: {', '.join(control)} — the asked object alone, so no name is needed: it shows "
               f"whether the tokens carry the motion; its column is outside **all**" if control else "")
            + f"); scored on {meta['eval_examples']:,} test videos ({meta['val_examples']:,} validation videos "
            f"for the reference check). "
            f"{meta['token_grid'][0]} frames x {meta['token_grid'][1]}x{meta['token_grid'][2]} frozen tower tokens"
            + (f" (each from its {2 * s['context'] + 1}x{2 * s['context'] + 1}-patch window"
               + (", by a per-window network pretrained on other videos to name shape and colour linearly"
                  if s.get("tower", "random") == "pretrained" else ", by a fixed random projection") + ")"
               if s.get("context") else "")
            + f" with a 2-D position embedding = **{meta['n_tokens']:,} tokens per video**; compressed arms get "
            f"**{meta['budget']} visual tokens ({meta['budget_percent']:.3f}%)** unless the row says otherwise. "
            f"Every arm: the same {s['layers']}-layer, width-{s['dim']} decoder (visual tokens as keys/values "
            f"only), trained from scratch for {s['steps']} steps x {s['batch']}"
            + (f" (the train split's first {s['train_videos']:,} videos)" if s.get("train_videos") else "")
            + " with the same schedule"
            + (f", curriculum (the first {s['curriculum'].rpartition(':')[2]} steps ask only "
               f"`{s['curriculum'].rpartition(':')[0]}`)" if s.get("curriculum") else "")
            + f" and data order per seed; the all-token arm reads all {meta['n_tokens']:,} tokens"
            + (f" ({len(full['seeds'])} seed{'s' if len(full['seeds']) > 1 else ''})" if full else "") + ". "
            "Answers are the options' words, scored by likelihood. Accuracy in %, mean ± sample std over seeds; "
            "a margin counts as a difference only beyond 2 standard errors (seed spread and the test set's "
            "binomial error). "
            + (f"Wall time of the whole job {wall / 60:.1f} min on {meta['machine']['cpu_count']} CPU cores."
               if wall else ""))


def learned_text(arms: Sequence[Mapping], meta: Mapping) -> str:
    """Which arms score above chance beyond 2 SE (all questions; per family)."""
    fams = meta["families"]
    rows = [[a["label"], "**yes**" if a["above_chance"] else "no"]
            + ["yes" if a["above_chance_by_family"].get(f) else "no" for f in fams] for a in arms]
    n = sum(a["above_chance"] for a in arms)
    head = (f"Above chance ({rep.pct(CHANCE)}%) beyond 2 SE (seed spread and the test set's binomial error): "
            f"{n} of {len(arms)} arms on all questions.")
    return head + "\n\n" + rep.table(["arm", "all"] + list(fams), rows)


def body(arms: Sequence[Mapping], meta: Mapping, img: str, h: str) -> str:
    checks = meta["checks"]
    ref = meta["reference_check"]
    lad, sent = ladder_table(arms, meta)
    lines = [setup_text(arms, meta), "", results_table(arms, meta)]
    if meta.get("missing_runs"):
        lines += [f"Runs not finished (left out): {', '.join(meta['missing_runs'])}.", ""]
    if meta.get("added_runs"):
        lines += [f"Run after the job and added to its stored results (the same grid settings, launched on its "
                  f"own with `launch.train`; not in the job's wall time): {', '.join(meta['added_runs'])}.", ""]
    lines += [f"{h} Does any arm learn the task?", "", learned_text(arms, meta), "",
              f"{h} Is the all-token arm an upper bound?", "",
              ("Yes: on the validation split no compressed arm scores significantly above it, and its train loss "
               f"had plateaued (last fifth {100 * max(ref['loss_drop_last_fifth']):.1f}% below the fifth before)."
               if ref["valid"] else f"**Reference failed**: {ref['reason']}. The ≥ 98% target is therefore "
                                    "not measured."), "",
              f"{h} Targets", "", rep.table(["target", "measured", "status"],
                                            [[c["target"], c["measured"], f"**{c['status']}**"] for c in checks]),
              f"{h} Token dynamics against every other arm (points, ± 2 SE)", "", comparison_table(arms, meta),
              f"{h} The paper's ablation ladder", "", lad, sent, "",
              f"{h} Plots", "", f"![accuracy vs tokens]({img}{FILES['plot']})", "",
              f"![accuracy by family]({img}{FILES['families']})", "", f"![example]({img}{FILES['example']})", "",
              f"![adaptive K]({img}{FILES['adaptive']})", ""]
    return "\n".join(lines)


def write_plots(arms: Sequence[Mapping], meta: Mapping, paths: Mapping[str, str], plan: Mapping,
                workdir: str, example: bool = True) -> None:
    """The plots; ``example=False`` leaves the example plot (it reads a test video and the runs'
    predictions) as it is."""
    marker = {"token_dynamics": "*", "none": "s"}
    rep.plot_accuracy_vs_tokens(
        [{"label": a["label"], "x": a["percent_tokens"], "y": a["accuracy"], "err": 2 * a["accuracy_se"],
          "marker": marker.get(a["method"], "o")} for a in arms], paths["plot"],
        title="Motion QA: accuracy vs tokens (± 2 SE)", chance=CHANCE)
    fams = list(meta["families"])
    rep.plot_grouped_bars(fams, {a["label"]: ([a["accuracy_by_family"][f] for f in fams],
                                              [a["accuracy_by_family_std"][f] for f in fams]) for a in arms},
                          paths["families"], title="Accuracy by question family (± seed std)", chance=CHANCE)
    rep.plot_histograms({a["label"]: a["k_hist"] for a in arms if "k_hist" in a}, paths["adaptive"],
                        title="Adaptive K per test video", xlabel="K chosen (visual tokens)")
    if example:
        example_plot(arms, meta, paths["example"], plan, workdir)


def example_plot(arms: Sequence[Mapping], meta: Mapping, path: str, plan: Mapping, workdir: str) -> None:
    """The first test video asking `direction` (else the first): frames, its token-dynamics map, answers."""
    import grain

    from td_jax.data import pipeline, tokens_store

    s = plan["settings"]
    src = {"source": "tfds", "tfds_name": s["dataset"], "data_dir": plan["data_dir"]}
    pick, example = 0, None
    for i, (m, frames) in enumerate(pipeline.iter_examples(src, "test")):
        if example is None or m["family"] == "direction":
            pick, example = i, (m, frames)
        if m["family"] == "direction":
            break
    meta_ex, frames = example
    dmap, k = None, s["budget"]
    head = next((a for a in plan["arms"] if a["name"] == HEADLINE), None)
    if head is not None and os.path.isfile(tokens_store.split_path(head["store"], "test")):
        src_store = grain.sources.ArrayRecordDataSource([tokens_store.split_path(head["store"], "test")])
        dmap = np.asarray(tokens_store.decode_record(src_store[pick])["pre/dynamics_map"])
    letters = "ABCDEFGH"
    answers = []
    for a in arms:
        run = read_run(run_dir(workdir, a["name"], a["seeds"][0]))
        pr = next((x for x in (run or {}).get("predictions", {}).get("test", []) if x["index"] == pick), None)
        if pr is not None:
            answers.append(f"{a['label']}: {letters[pr['prediction']]}{'✓' if pr['prediction'] == pr['answer'] else '✗'}")
    opts_text = "   ".join(f"{letters[i]}. {o}" for i, o in enumerate(meta_ex["options"]))
    text = (f"Q: {meta_ex['question']}\n{opts_text}\ncorrect: {letters[meta_ex['answer']]}   (K = {k})\n"
            + rep.wrap("answers (seed 0) — " + "; ".join(answers), 120))
    rep.plot_example(frames, dmap, k, text, path, title=f"test video {meta_ex['id']} ({meta_ex['family']})")


def from_json(results_dir: str, workdir: str, plan: Mapping | None = None) -> tuple[list[dict], dict]:
    """(arm records, meta) as a previous report stored them in ``results_dir`` (the runs may
    be gone), with every rule re-applied: chance flags, the reference check (loss histories
    are read from ``workdir`` where the runs still exist) and the targets.

    With ``plan``: an arm of the plan that the stored report lacks but whose runs have since
    finished in ``workdir`` (e.g. the all-token arm, run on its own with ``launch.train``) is
    read from those runs and added; it leaves ``missing_runs`` and is listed in
    ``meta["added_runs"]``; the plan's runs still unfinished join ``missing_runs``.  The added
    runs' settings must be the stored report's."""
    paths = rep.result_paths(results_dir, FILES)
    missing = [p for p in (paths["json"], paths["meta"]) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"no stored motion-QA report to re-render: {missing} missing")
    with open(paths["json"]) as f:
        arms = json.load(f)
    with open(paths["meta"]) as f:
        meta = json.load(f)
    if plan is not None:
        arms, meta = _add_finished_runs(arms, meta, plan, workdir, results_dir)
    for a in arms:
        a.update(chance_flags(a))
    meta["reference_check"] = reference_check(arms, meta, workdir)
    return arms, meta


def _add_finished_runs(arms: list[dict], meta: dict, plan: Mapping, workdir: str, results_dir: str
                       ) -> tuple[list[dict], dict]:
    """The stored arms plus the plan's arms that were missing and have finished since (every
    seed of such an arm must have finished; their runs' settings must match the stored ones)."""
    stored_s = meta.get("settings", {})
    have = {a["name"] for a in arms}
    new, unfinished = [], []
    for arm in plan["arms"]:
        if arm["name"] in have:
            continue
        runs = [read_run(run_dir(workdir, arm["name"], seed)) for seed in arm["seeds"]]
        if not runs or not all(map(finished, runs)):
            unfinished += [f"{arm['name']}_s{seed}" for seed, r in zip(arm["seeds"], runs) if not finished(r)]
            continue
        run_s = grid_settings(plan["settings"], runs)
        differ = sorted(k for k in stored_s if stored_s[k] != run_s.get(k))     # keys a stored report lacks pass
        if differ:
            raise ValueError(f"cannot add {arm['name']}'s runs to the stored report: the grid's settings differ "
                             f"from the stored ones in {differ}")
        new.append(summarize_arm(arm, runs, plan["n_tokens"], results_dir))
    missing = list(dict.fromkeys(meta.get("missing_runs", []) + unfinished))     # the plan's runs not in the report
    order = {a["name"]: i for i, a in enumerate(plan["arms"])}
    arms = sorted(arms + new, key=lambda a: order.get(a["name"], len(order)))
    added = [f"{a['name']}_s{s}" for a in new for s in a["seeds"]]
    meta = {**meta, "missing_runs": [r for r in missing if r not in added],
            "added_runs": sorted(set(meta.get("added_runs", [])) | set(added))}
    return arms, meta


def write(plan: Mapping, workdir: str, results_dir: str, readme: str = "", stored: bool = False) -> dict:
    """Collects the runs and writes every result file (and the README block); returns the paths.
    ``stored``: re-render from the stored motion_qa.json / _meta.json instead of the runs (the
    example plot, which needs the runs, is left as it is; the others are redrawn)."""
    arms, meta = from_json(results_dir, workdir, plan) if stored else collect(plan, workdir, results_dir)
    meta["checks"] = target_checks(arms, meta)
    os.makedirs(results_dir, exist_ok=True)
    paths = rep.result_paths(results_dir, FILES)
    with open(paths["json"], "w") as f:
        json.dump(rep.jsonable(arms), f, indent=1)
    with open(paths["meta"], "w") as f:
        json.dump(rep.jsonable(meta), f, indent=1)
    with open(paths["md"], "w") as f:
        f.write("# Motion QA: token reduction in miniature\n\n" + body(arms, meta, "", "##"))
    write_plots(arms, meta, paths, plan, workdir, example=not stored)
    if readme:
        img = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(readme)) or ".").rstrip("/") + "/"
        rep.replace_block(readme, README_BEGIN, README_END, body(arms, meta, img, "####"))
    return paths
