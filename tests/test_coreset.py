"""Herding and k-center greedy against selections worked out by hand on tiny feature sets."""
import numpy as np
import pytest

from rank_select.coreset import select_herding, select_kcenter


def test_herding_hand_computed():
    # 1-d features 0, 1, 2, 10: mean 3.25.
    # t=1: target 3.25 -> nearest is 2 (pos 2).
    # t=2: target 6.5 - 2 = 4.5 -> distances to 0, 1, 10: 4.5, 3.5, 5.5 -> 1 (pos 1).
    # t=3: target 9.75 - 3 = 6.75 -> 0: 6.75, 10: 3.25 -> 10 (pos 3); then 0.
    f = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert select_herding(f, 4).tolist() == [2, 1, 3, 0]
    assert select_herding(f, 2).tolist() == [2, 1]


def test_herding_2d_hand_computed():
    # points (0,0), (2,0), (0,2), (2,2), (1,1): mean (1,1) -> first pick is (1,1) (pos 4);
    # t=2: target (2,2) - (1,1) = (1,1): the four corners tie at distance 2 -> lowest position 0;
    # t=3: target (3,3) - (1,1) = (2,2): (2,2) exactly -> pos 3.
    f = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [1, 1]], dtype=float)
    assert select_herding(f, 3).tolist() == [4, 0, 3]


def test_kcenter_hand_computed():
    # 1-d features 0, 1, 2, 10: mean 3.25 -> first pick 2 (pos 2);
    # farthest from {2}: 10 (pos 3); nearest-picked distances then 0: 2, 1: 1 -> 0 (pos 0); then 1.
    f = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert select_kcenter(f, 4).tolist() == [2, 3, 0, 1]
    assert select_kcenter(f, 1).tolist() == [2]


def test_selections_are_permutations_and_k_is_capped():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(7, 5))
    for rule in (select_herding, select_kcenter):
        picks = rule(f, 10)
        assert sorted(picks.tolist()) == list(range(7))


def test_herding_mean_error_decreases_faster_than_random():
    # the point of herding: the mean of the first k picks tracks the class mean
    rng = np.random.default_rng(1)
    f = rng.normal(size=(200, 8))
    picks = select_herding(f, 10)
    err = np.linalg.norm(f[picks].mean(0) - f.mean(0))
    rand = [np.linalg.norm(f[rng.choice(200, 10, replace=False)].mean(0) - f.mean(0)) for _ in range(50)]
    assert err < min(rand)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.array([[np.nan, 1.0]]), np.zeros(3)])
def test_bad_features_refused(bad):
    for rule in (select_herding, select_kcenter):
        with pytest.raises(ValueError):
            rule(bad, 1)
