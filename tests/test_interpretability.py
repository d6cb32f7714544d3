"""The 2AFC interpretability proxy against units whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atlas.site.interpretability import forced_choice, image_statistics, split_examples, unit_proxy

SIZE, PATCH, K = 48, 12, 20
MAGENTA, GREEN = (230, 40, 220), (40, 200, 50)


def _dataset(count: int, seed: int) -> np.ndarray:
    """Smooth coloured backgrounds; a third carry a magenta square, a third a green one."""
    generator = np.random.default_rng(seed)
    coarse = torch.from_numpy(generator.uniform(60, 190, (count, 3, 6, 6)))
    images = (
        F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic").clamp(0, 255).permute(0, 2, 3, 1).numpy()
    )
    images = images.astype(np.uint8)
    for index in range(count):
        colour = (MAGENTA, GREEN, None)[index % 3]
        if colour is not None:
            y, x = generator.integers(0, SIZE - PATCH, 2)
            images[index, y : y + PATCH, x : x + PATCH] = colour
    return images


def _detector_maps(images: np.ndarray) -> np.ndarray:
    """A planted unit: magenta minus green, pooled over patch-sized windows (N, H', W')."""
    pixels = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255
    opponent = pixels[:, 0] + pixels[:, 2] - 2 * pixels[:, 1]
    return F.avg_pool2d(opponent[:, None], PATCH // 2, stride=2)[:, 0].numpy()


def _square(colour: tuple[int, int, int]) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 128, np.uint8)
    image[SIZE // 4 : 3 * SIZE // 4, SIZE // 4 : 3 * SIZE // 4] = colour
    return image


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return _dataset(150, seed=0)


def test_a_planted_pattern_detector_scores_at_least_ninety_percent(data: np.ndarray) -> None:
    maps = _detector_maps(data).reshape(len(data), -1)
    top = data[np.argsort(-maps.max(axis=1))[:K]]  # the atlas's buckets: spatial max / spatial min
    bottom = data[np.argsort(maps.min(axis=1))[:K]]
    scores = unit_proxy([_square(MAGENTA)], [_square(GREEN)], list(top), list(bottom))
    for judged_from in ("optimized", "examples"):
        result = scores[judged_from]
        assert result.accuracy >= 0.9, judged_from
        assert result.strong == result.weak == K // 2
        assert result.low < result.accuracy <= result.high


def test_shuffled_examples_score_chance_within_the_interval(data: np.ndarray) -> None:
    order = np.random.default_rng(3).permutation(len(data))
    top, bottom = data[order[:K]], data[order[K : 2 * K]]
    result = unit_proxy([], [], list(top), list(bottom))["examples"]
    assert result.contains(0.5)
    assert 0.1 < result.high - result.low < 0.6  # an interval that says something


def test_the_feature_space_is_pluggable_and_degenerate_cases_are_none(data: np.ndarray) -> None:
    def brightness(images):
        return np.array([[np.asarray(i, float).mean(), 1.0] for i in images])

    dark, light = (
        [np.full((8, 8, 3), v, np.uint8) for v in (10, 20, 30)],
        [np.full((8, 8, 3), 240, np.uint8)] * 3,
    )
    assert forced_choice(light, dark, light, dark, features=brightness).accuracy == 1.0
    assert forced_choice([], dark, light, dark) is None
    assert forced_choice(light, dark, [], dark) is None
    assert image_statistics(list(data[:2])).shape == (2, 72)
    references, queries = split_examples(list(range(5)))
    assert references == [0, 1, 2] and queries == [3, 4]
