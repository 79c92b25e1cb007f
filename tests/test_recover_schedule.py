"""EarlyLate schedule, batch layout, lr cosine and crop curriculum: hand-computed values."""
from __future__ import annotations

import math
import random

import pytest

from common.compute.shards import shard_items
from recover.augment import min_crop_scale, random_resized_crop_box
from recover.schedule import (
    chunk_sizes,
    class_rounds,
    cosine_lr,
    early_late_schedule,
    image_iteration_ratio,
    join_round,
    lr_at,
    plan_groups,
    uniform_schedule,
)


def one_class(ipc):
    return [(0, i) for i in range(ipc)]


def test_ipc50_itr4000_ri500_is_231_of_400():
    assert chunk_sizes(50, 8) == [7, 7, 6, 6, 6, 6, 6, 6]
    assert [join_round(i, 50, 8) for i in (0, 6, 7, 13, 14, 19, 20, 43, 44, 49)] == [0, 0, 1, 1, 2, 2, 3, 6, 7, 7]
    s = early_late_schedule(one_class(50), 50, 500, class_rounds(1, 4000, 500))
    assert s.total_iterations == 4000 and s.dropped_rounds == 0
    # 500 * (8*7 + 7*7 + 6*6 + 5*6 + 4*6 + 3*6 + 2*6 + 1*6) = 500 * 231
    assert s.image_iterations == 500 * 231
    assert s.image_iterations / uniform_schedule(50, 4000).image_iterations == 231 / 400
    assert image_iteration_ratio(50, 4000, 500) == pytest.approx(0.5775)
    assert s.iterations[:7] == [4000] * 7 and s.iterations[7] == 3500 and s.iterations[-1] == 500
    assert [len(r) for r in s.rounds] == [7, 14, 20, 26, 32, 38, 44, 50]


def test_ipc_not_divisible_by_rounds():
    # IPC 10, 3 rounds: chunks 4, 3, 3; image i gets (3 - join) * RI
    assert chunk_sizes(10, 3) == [4, 3, 3]
    s = early_late_schedule(one_class(10), 10, 100, [3])
    assert s.iterations == [300] * 4 + [200] * 3 + [100] * 3
    assert s.total_iterations == 300
    # more rounds than images: IPC 3, 5 rounds -> chunks 1, 1, 1, 0, 0; nothing dropped
    assert chunk_sizes(3, 5) == [1, 1, 1, 0, 0]
    s = early_late_schedule(one_class(3), 3, 10, [5])
    assert s.iterations == [50, 40, 30] and s.total_iterations == 50


def test_per_class_rounds_with_min_iterations():
    r = class_rounds(200, 4000, 500, min_iterations=2000, seed=3)
    assert min(r) == 4 and max(r) == 8  # drawn from [2000 // 500, 4000 // 500]
    assert r == class_rounds(200, 4000, 500, min_iterations=2000, seed=3)
    assert r != class_rounds(200, 4000, 500, min_iterations=2000, seed=4)
    assert class_rounds(5, 4000, 500) == [8] * 5
    assert class_rounds(5, 4000, 500, min_iterations=4000) == [8] * 5
    # a batch of two classes with R = 8 and R = 4 (IPC 8, RI 10): the batch runs 8 rounds
    items = one_class(8) + [(1, i) for i in range(8)]
    s = early_late_schedule(items, 8, 10, [8, 4])
    assert s.total_iterations == 80
    assert s.iterations[:8] == [80, 70, 60, 50, 40, 30, 20, 10]  # chunks of 1, join at round i
    assert s.iterations[8:] == [40, 40, 30, 30, 20, 20, 10, 10]  # chunks of 2, gone after round 3
    assert s.rounds[0] == [0, 8, 9] and s.rounds[4] == [0, 1, 2, 3, 4]


def test_class_split_across_two_batches():
    # IPC 10, batch 6: the class spans two batches, the in-class index continues
    (group,) = plan_groups(1, 10, 6)
    assert group.batches == [[(0, i) for i in range(6)], [(0, i) for i in range(6, 10)]]
    first = early_late_schedule(group.batches[0], 10, 100, [5])  # chunks of 2
    assert first.iterations == [500, 500, 400, 400, 300, 300] and first.total_iterations == 500
    second = early_late_schedule(group.batches[1], 10, 100, [5])
    # images 6, 7 join at round 3, images 8, 9 at round 4: rounds 0-2 are empty and dropped
    assert second.dropped_rounds == 3 and second.total_iterations == 200
    assert second.rounds == [[0, 1], [0, 1, 2, 3]]
    assert second.iterations == [200, 200, 100, 100]
    assert first.image_iterations + second.image_iterations == early_late_schedule(one_class(10), 10, 100, [5]
                                                                                   ).image_iterations


def test_ipc1_has_no_rounds():
    s = early_late_schedule([(0, 0), (1, 0), (2, 0)], 1, 500, [8, 8, 8])
    assert s.iterations == [4000] * 3 and s.total_iterations == 4000
    assert all(r == [0, 1, 2] for r in s.rounds)  # every round the same: uniform
    assert image_iteration_ratio(1, 4000, 500) == 1.0


def test_groups_and_shards():
    groups = plan_groups(25, 10, 100)
    assert [g.classes for g in groups] == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    assert all(len(g.batches) == 1 for g in groups)
    # batch size not a multiple of IPC: whole classes, 3 per batch
    assert [g.classes for g in plan_groups(7, 10, 35)] == [[0, 1, 2], [3, 4, 5], [6]]
    shards = [shard_items(plan_groups(7, 10, 30), 3, k, index=lambda g: g.index) for k in range(3)]
    classes = [c for shard in shards for g in shard for c in g.classes]
    assert sorted(classes) == list(range(7)) and len(set(classes)) == 7
    assert [g.index for g in shards[1]] == [1]


def test_uniform_schedule():
    s = uniform_schedule(4, 1000)
    assert s.total_iterations == 1000 and s.iterations == [1000] * 4 and len(s.rounds) == 1
    s = uniform_schedule(4, 1000, 250)
    assert len(s.rounds) == 4 and s.iterations == [1000] * 4


def test_lr_cosine_global_and_per_round():
    assert cosine_lr(0.25, 0, 100) == 0.25
    assert cosine_lr(0.25, 50, 100) == pytest.approx(0.125)
    assert cosine_lr(0.25, 100, 100) == pytest.approx(0.0)
    # global (faithful default): the round does not matter
    assert lr_at(0.25, 30, 100, 25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)) * 0.25)
    # --round-lr-reset: restart every round of 25 iterations
    assert lr_at(0.25, 25, 100, 25, True) == 0.25
    assert lr_at(0.25, 30, 100, 25, True) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 25)) * 0.25)


def test_crop_curriculum():
    assert min_crop_scale(10, 100, "cosine", 0.0) == 0.08  # milestone 0: off (released default)
    assert min_crop_scale(0, 100, "cosine", 1.0) == pytest.approx(1.0)
    assert min_crop_scale(25, 100, "cosine", 1.0) == pytest.approx(0.08 + 0.92 * (1 + math.cos(math.pi / 4)) / 2)
    assert min_crop_scale(50, 100, "cosine", 1.0) == pytest.approx(0.54)
    assert min_crop_scale(25, 100, "linear", 0.5) == pytest.approx(0.54)
    assert min_crop_scale(49, 100, "step", 0.5) == 1.0
    assert min_crop_scale(50, 100, "step", 0.5) == 0.08
    assert min_crop_scale(60, 100, "linear", 0.5) == 0.08


def test_crop_box_follows_torchvision_rules():
    rng = random.Random(0)
    assert random_resized_crop_box(32, 32, (1.0, 1.0), rng) in [(0, 0, 32, 32)] + [
        (i, j, h, w) for i in range(3) for j in range(3) for h in (28, 29, 30, 31, 32) for w in (28, 29, 30, 31, 32)]
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(32, 24, (0.08, 0.5), rng)
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 24 and h > 0 and w > 0
