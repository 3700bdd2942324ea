"""The moving-shapes benchmark has no shortcut: a *name-blind oracle* stays near chance.

Every rule of ``qa_checker.OBJECT_RULES`` answers from the true tracks without the question's
object name (the farthest / fastest / most visible / entering or leaving object, the one
nearest a border or the centre at the end, any object); ``TextPrior`` answers from the
question and option texts alone (answer priors given the question, option-list position).
Each must stay <= 35% (chance 25%), and >= 15% (an option a rule rules out is a shortcut
too), on every family of ``moving_shapes_qa/motion`` and
``/default``.  With N = 576 examples per family the binomial standard error of a rule at
chance is sqrt(0.25 * 0.75 / 576) = 1.8 points, so 35% is 5.5 errors above chance: a fair
family does not fail by bad luck, and a shortcut worth 10+ points above chance does not pass.
"""
import collections

import numpy as np
import pytest

from td_jax.data import moving_shapes as ms
from td_jax.data import moving_shapes_qa, qa_checker

N_PER_FAMILY = 576      # a multiple of 4 letters x 4 and x 6 values: exactly balanced
FIT_PER_FAMILY = 192
BOUND = 0.35
FLOOR = 0.15   # far below chance is a shortcut too: the rule rules an option out
CONFIGS = {c.name: c for c in moving_shapes_qa.CONFIGS}
NAMED = ("color", "shape", "direction", "motion", "position")   # ask about one named object


def _examples(config, split, per_family):
    scene = ms.SceneConfig(num_frames=config.num_frames, resolution=config.resolution)
    fams = tuple(config.families)
    return [ms.make_qa(scene, config.seed, split, i, fams) for i in range(per_family * len(fams))]


@pytest.fixture(scope="module", params=["motion", "default"])
def audited(request):
    config = CONFIGS[request.param]
    exs = _examples(config, "train", N_PER_FAMILY)
    fit = _examples(config, "validation", FIT_PER_FAMILY)
    return config, exs, qa_checker.blind_audit(exs, fit, resolution=config.resolution)


def test_name_blind_oracle_stays_near_chance(audited):
    config, exs, table = audited
    assert set(table) == set(config.families)
    over = {}
    for fam, row in table.items():
        assert row["n"] == N_PER_FAMILY
        rules = [r for r in row if r != "n" and r not in qa_checker.BLIND_EXEMPT.get(fam, ())]
        assert "text_prior" in rules and (fam == "count" or len(rules) == 1 + len(qa_checker.OBJECT_RULES)
                                          - len(qa_checker.BLIND_EXEMPT.get(fam, ()))), (fam, rules)
        over.update({(fam, r): round(row[r], 3) for r in rules if not FLOOR <= row[r] <= BOUND})
    assert not over, f"moving_shapes_qa/{config.name}: blind rules outside [{FLOOR:.0%}, {BOUND:.0%}]: {over}"
    # The exempt rules do read the answer where they should: the oracle is not vacuous.
    if "speed" in table:
        assert table["speed"]["fastest"] == 1.0
    assert table["order"]["first_to_leave"] > 0.5


def test_audited_examples_are_checked_and_balanced(audited):
    config, exs, _ = audited
    letters, values = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for ex in exs:
        assert qa_checker.check_answer(ex, resolution=config.resolution) == ex["answer"], (ex["id"], ex["question"])
        letters[ex["family"]][ex["answer"]] += 1
        values[ex["family"]][ex["options"][ex["answer"]]] += 1
    for fam in config.families:
        assert letters[fam] == {a: N_PER_FAMILY // ms.NUM_OPTIONS for a in range(ms.NUM_OPTIONS)}, fam
    pools = {"color": ms.COLOR_NAMES, "shape": ms.SHAPES, "direction": ms.DIRECTIONS, "motion": ms.MOTIONS,
             "position": ms.QUADRANTS, "count": ms.COUNT_WORDS}
    for fam in set(config.families) & set(pools):
        assert values[fam] == {v: N_PER_FAMILY // len(pools[fam]) for v in pools[fam]}, (fam, values[fam])


@pytest.mark.parametrize("family", NAMED)
def test_every_option_is_some_objects_answer(family):
    """The design behind the oracle's result: in a named-object question the four objects'
    answers are exactly the four options, so without the name each option is as likely."""
    cfg = ms.SceneConfig()
    fams = (family,)
    for i in range(64):
        ex = ms.make_qa(cfg, 5, "test", i, fams)
        assert len(ex["objects"]["color"]) == ms.NUM_OPTIONS
        assert sorted(qa_checker.object_answers(ex, resolution=cfg.resolution)) == sorted(ex["options"]), ex["id"]


def test_oracle_catches_planted_shortcuts():
    """The audit fails a benchmark that has the shortcuts the issue names."""
    cfg = ms.SceneConfig()
    exs = [ms.make_qa(cfg, 0, "train", i, ("direction",)) for i in range(200)]
    fit = [ms.make_qa(cfg, 0, "validation", i, ("direction",)) for i in range(100)]
    before = qa_checker.blind_audit(exs, fit, resolution=cfg.resolution)["direction"]
    assert max(v for k, v in before.items() if k != "n") <= BOUND
    for ex in exs:   # distractors stand still: the asked object becomes the farthest mover
        target = qa_checker.object_answers(ex, resolution=cfg.resolution).index(ex["options"][ex["answer"]])
        pos = ex["objects"]["positions"]
        for k in range(len(pos)):
            if k != target:
                pos[k] = pos[k, :1]
    planted = qa_checker.blind_audit(exs, fit, resolution=cfg.resolution)["direction"]
    assert planted["farthest"] == planted["fastest"] == 1.0
    # an answer prior by letter: every fit example answers A, so do the audited ones
    def at_a(ex):
        opts = list(ex["options"])
        a = opts.pop(ex["answer"])
        return dict(ex, options=[a, *opts], answer=0)
    prior = qa_checker.blind_audit([at_a(e) for e in exs], [at_a(e) for e in fit], resolution=cfg.resolution)
    assert prior["direction"]["text_prior"] == 1.0


def test_make_qa_is_make_example_without_frames():
    cfg = ms.SceneConfig(num_frames=8, resolution=32)
    for i in range(len(ms.FAMILIES)):
        full, qa = ms.make_example(cfg, 4, "validation", i), ms.make_qa(cfg, 4, "validation", i)
        assert set(full) - set(qa) == {"frames"}
        for k in ("id", "question", "options", "answer", "family", "family_id"):
            assert full[k] == qa[k]
        for k in ("color", "shape", "positions", "visible"):
            np.testing.assert_array_equal(np.asarray(full["objects"][k]), np.asarray(qa["objects"][k]))


def test_bounce_track_reflects_inside_the_frame():
    cfg = ms.SceneConfig(num_frames=64, resolution=64)
    m = cfg.r + 1
    pos, vis = ms.bounce_track(cfg, (m + 1.0, 40.0), (-3.0, 0.5))
    assert vis.all() and pos.shape == (64, 2)
    assert pos.min() >= m - 1e-4 and pos.max() <= cfg.resolution - 1 - m + 1e-4
    steps = np.hypot(*np.diff(pos, axis=0).T)
    speed = np.hypot(3.0, 0.5)
    assert np.isclose(np.median(steps), speed, atol=1e-4)     # straight steps between bounces
    assert (steps <= speed + 1e-4).all()
    assert pos[0, 0] == pytest.approx(m + 1.0) and pos[1, 0] == pytest.approx(m + 2.0)   # bounced off the left


def test_audit_cli_prints_the_table_and_rejects_bad_input():
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "launch.audit_data", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=240)

    out = run("--configs=tiny", "--n=16", "--fit_n=8")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [l for l in out.stdout.splitlines() if l.startswith("| ") and not l.startswith("| family")]
    assert "### moving_shapes_qa/tiny: 16 train examples per family" in out.stdout
    assert [r.split("|")[1].strip() for r in rows] == list(ms.FAMILIES)
    assert "(x)" in rows[ms.FAMILIES.index("speed")] and rows[ms.FAMILIES.index("count")].count("–") == 10
    bad = run("--configs=tiny,huge", "--n=4")
    assert bad.returncode != 0 and "unknown ['huge']" in bad.stderr
    missing = run("--configs=tiny", "--generator=/nonexistent/moving_shapes.py")
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error:") and \
        "/nonexistent/moving_shapes.py" in missing.stderr
