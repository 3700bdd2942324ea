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
    return {"base": base, "traj": traj.reshape(n, k, -1), "name": name, "label": label}


def test_probe_needs_both_the_name_and_the_map_on_a_planted_task():
    train, test = _planted(768, 0), _planted(256, 1)
    _, both = probe.fit(train, test, steps=400, seed=0)
    _, blind = probe.fit(train, test, use_name=False, steps=400, seed=0)
    _, no_map = probe.fit(train, test, use_map=False, steps=400, seed=0)
    assert both > 0.9
    assert blind < 0.4 and no_map < 0.4
