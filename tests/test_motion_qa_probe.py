"""The store probe (experiments/motion_qa_probe.py): trajectories read off a map, question names,
and a planted task it must solve only with both the name and the map."""
import numpy as np
import pytest

from experiments import motion_qa_probe as probe
from td_jax.data.moving_shapes import COLOR_NAMES, DIRECTIONS, SHAPES


def test_trajectories_follow_a_moving_cluster():
    m = np.zeros((3, 4, 5), np.int64)
    for t in range(3):
        m[t, 2, t + 1] = 1                                   # cluster 1: one cell moving right on row 2
    tr = probe.trajectories(m, 3).reshape(3, 3, 3)           # [k, T, (area, y, x)]
    np.testing.assert_allclose(tr[1, :, 0], 1 / 20)
    np.testing.assert_allclose(tr[1, :, 1], 2 / 3)
    np.testing.assert_allclose(tr[1, :, 2], [1 / 4, 2 / 4, 3 / 4])
    assert (tr[2] == 0).all()                                # absent cluster: zeros
    np.testing.assert_allclose(tr[0, :, 0], 19 / 20)


def test_name_vector_reads_one_colour_and_one_shape():
    v = probe.name_vector("In which direction does the red circle move?")
    assert v[COLOR_NAMES.index("red")] == 1 and v[len(COLOR_NAMES) + SHAPES.index("circle")] == 1 and v.sum() == 2
    with pytest.raises(ValueError, match="one colour and one shape"):
        probe.name_vector("Which object moves the fastest?")
    # a color question names the shape only
    v = probe.name_vector("What color is the triangle?", "color")
    assert v[len(COLOR_NAMES) + SHAPES.index("triangle")] == 1 and v.sum() == 1
    with pytest.raises(ValueError, match="one shape and no colour"):
        probe.name_vector("In which direction does the red circle move?", "color")
    with pytest.raises(ValueError, match="families"):
        probe.name_vector("What color is the triangle?", "speed")


def _planted(n, seed):
    """4 tokens per example, each an object of its own colour moving in its own direction;
    the label is the direction of the object whose colour the name gives."""
    rng = np.random.default_rng(seed)
    k, t = 4, 6
    base = np.zeros((n, k, 16), np.float32)
    traj = np.zeros((n, k, t, 3), np.float32)
    name = np.zeros((n, 10), np.float32)
    label = np.zeros(n, np.int64)
    steps = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    for i in range(n):
        cols = rng.permutation(len(COLOR_NAMES))[:k]
        dirs = rng.permutation(4)
        base[i, np.arange(k), cols] = 1.0
        base[i] += 0.05 * rng.normal(size=(k, 16))
        for j in range(k):
            dy, dx = steps[DIRECTIONS[dirs[j]]]
            traj[i, j, :, 0] = 0.01
            traj[i, j, :, 1] = 0.5 + 0.05 * dy * np.arange(t)
            traj[i, j, :, 2] = 0.5 + 0.05 * dx * np.arange(t)
        target = rng.integers(k)
        name[i, cols[target]] = 1.0
        name[i, 6 + rng.integers(4)] = 1.0                   # a shape word that carries nothing here
        label[i] = dirs[target]
    return {"base": base, "traj": traj.reshape(n, k, -1), "name": name, "allowed": np.ones((n, 4), bool),
            "label": label}


def test_probe_needs_both_the_name_and_the_map_on_a_planted_task():
    train, test = _planted(768, 0), _planted(256, 1)
    _, both = probe.fit(train, test, steps=400, seed=0)
    _, blind = probe.fit(train, test, use_name=False, steps=400, seed=0)
    _, no_map = probe.fit(train, test, use_map=False, steps=400, seed=0)
    assert both > 0.9
    assert blind < 0.4 and no_map < 0.4


def test_probe_answers_only_among_the_questions_options():
    """color: 6 colour values, 4 of them in each question; the label is the named shape's colour,
    carried by the base alone (the map adds nothing), and never outside the options."""
    rng = np.random.default_rng(0)

    def planted(n):
        k = 4
        base = 0.05 * rng.normal(size=(n, k, 16)).astype(np.float32)
        name = np.zeros((n, 10), np.float32)
        allowed = np.zeros((n, len(COLOR_NAMES)), bool)
        label = np.zeros(n, np.int64)
        for i in range(n):
            cols, shapes = rng.permutation(len(COLOR_NAMES))[:k], rng.permutation(len(SHAPES))
            base[i, np.arange(k), cols] += 1.0                       # colour one-hot
            base[i, np.arange(k), 6 + shapes] += 1.0                 # shape one-hot
            target = rng.integers(k)
            name[i, len(COLOR_NAMES) + shapes[target]] = 1.0
            allowed[i, cols] = True
            label[i] = cols[target]
        return {"base": base, "traj": np.zeros((n, k, 6), np.float32), "name": name, "allowed": allowed,
                "label": label}

    train, test = planted(768), planted(256)
    _, with_name = probe.fit(train, test, use_map=False, steps=400, seed=0)
    _, blind = probe.fit(train, test, use_name=False, use_map=False, steps=400, seed=0)
    assert with_name > 0.9 and blind < 0.4
    # a question whose only option is the answer is answered right even by a reader that sees
    # nothing (no name, no map, untrained): the options, not the 6-colour vocabulary, are scored
    only = {**test, "allowed": np.eye(len(COLOR_NAMES), dtype=bool)[test["label"]]}
    assert probe.fit(only, only, use_name=False, use_map=False, steps=0, seed=0) == (1.0, 1.0)


def test_tower_probe_labels_tokens_by_the_topmost_object():
    from td_jax.data.tower import token_owner
    objects = {"shape": ["square", "square", "circle"],
               "positions": np.array([[[10.0, 10.0]], [[14.0, 10.0]], [[26.0, 26.0]]]),
               "visible": np.array([[True], [True], [False]])}
    owner = token_owner(objects, 0, 8, 8, 4, 5)
    # patch centres 1.5, 5.5, 9.5, 13.5, ...: the first square (|d| <= 4.25) covers columns 2-3,
    # the second (drawn later, on top) columns 3-4; the invisible circle nothing
    expect = -np.ones((8, 8), np.int64)
    expect[2:4, 2:4] = 0
    expect[2:4, 3:5] = 1
    np.testing.assert_array_equal(owner, expect)


def test_tower_probe_reads_colour_from_every_token():
    """Colour is in every token of the frozen tower (the probe machinery works end to end)."""
    from experiments import tower_probe
    rows = tower_probe.run(["random:0"], ["linear"], 6, 3, log=lambda *_: None)
    assert [(r["target"], r["probe"]) for r in rows] == [("shape", "linear"), ("colour", "linear")]
    colour = rows[1]
    assert colour["held_out"] >= 0.9 and colour["majority"] < 0.5 and colour["test_tokens"] > 100
    with pytest.raises(ValueError, match="unknown probe"):
        tower_probe.fit_probe("svm", np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    assert "| random | 0 | linear |" in tower_probe.markdown(rows, "cmd")
    with pytest.raises(ValueError, match="KIND:CONTEXT"):
        tower_probe.parse_tower("trained:1")
