"""Each objective's value against a direct computation on a small tensor."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from atlas.models import LOGITS, UnknownLayerError, load_model
from atlas.optvis import objectives as obj


@pytest.fixture()
def state() -> obj.StepState:
    generator = torch.Generator().manual_seed(0)
    acts = torch.randn(4, 5, 3, 3, generator=generator)
    logits = torch.randn(4, 10, generator=generator)
    images = torch.rand(4, 3, 6, 6, generator=generator)
    return obj.StepState({"layer": acts, LOGITS: logits}, images)


def test_channel_is_spatial_mean_for_every_element(state):
    acts = state.activations["layer"]
    assert torch.allclose(obj.channel("layer", 2)(state), acts[:, 2].mean(dim=(1, 2)))


def test_channel_bound_to_elements_gives_each_its_own_channel(state):
    acts = state.activations["layer"]
    value = obj.channel("layer", [4, 1], batch=[3, 0])(state)
    expected = torch.tensor([acts[0, 1].mean(), 0.0, 0.0, acts[3, 4].mean()])
    assert torch.allclose(value, expected)


def test_neuron_defaults_to_centre_and_accepts_position(state):
    acts = state.activations["layer"]
    assert torch.allclose(obj.neuron("layer", 3)(state), acts[:, 3, 1, 1])
    assert torch.allclose(obj.neuron("layer", 3, x=2, y=0, batch=1)(state)[1], acts[1, 3, 0, 2])


def test_neuron_outside_the_map_is_an_error(state):
    with pytest.raises(obj.ObjectiveError, match="outside"):
        obj.neuron("layer", 0, x=7)(state)


def test_deepdream_is_mean_squared_activation(state):
    acts = state.activations["layer"]
    assert torch.allclose(obj.deepdream("layer")(state), acts.pow(2).mean(dim=(1, 2, 3)))


def test_class_logit_and_probability(state):
    logits = state.activations[LOGITS]
    assert torch.allclose(obj.class_logit(7)(state), logits[:, 7])
    assert torch.allclose(obj.class_probability(7)(state), torch.softmax(logits, 1)[:, 7])


def test_direction_dot_product_and_cosine_variant(state):
    acts = state.activations["layer"]
    vector = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    dots = torch.einsum("bchw,c->bhw", acts, vector)
    assert torch.allclose(obj.direction("layer", vector)(state), dots.mean(dim=(1, 2)), atol=1e-6)
    cosines = dots / (acts.norm(dim=1) * vector.norm())
    weighted = (dots * cosines.clamp_min(1e-4)).mean(dim=(1, 2))
    value = obj.direction("layer", vector, cosine_power=1.0)(state)
    assert torch.allclose(value, weighted, atol=1e-5)


def test_one_direction_per_bound_element(state):
    acts = state.activations["layer"]
    vectors = obj.random_unit_vectors(5, 2, seed=3)
    value = obj.direction("layer", vectors, batch=[2, 3])(state)
    expected = torch.einsum("bchw,bc->b", acts[2:], vectors) / 9
    assert torch.allclose(value[2:], expected, atol=1e-6)
    assert torch.all(value[:2] == 0)


def test_random_unit_vectors_are_seeded_and_unit_length():
    first = obj.random_unit_vectors(16, 3, seed=5)
    assert torch.equal(first, obj.random_unit_vectors(16, 3, seed=5))
    assert not torch.equal(first, obj.random_unit_vectors(16, 3, seed=6))
    assert torch.allclose(first.norm(dim=1), torch.ones(3))


def _gram_vector(act: torch.Tensor) -> torch.Tensor:
    flat = act.reshape(act.shape[0], -1)
    return (flat @ flat.T).flatten()


def test_diversity_matches_the_article_formula(state):
    acts = state.activations["layer"]
    value = obj.diversity("layer")(state)
    total = 0.0
    for a, b in itertools.permutations(range(4), 2):
        total -= F.cosine_similarity(_gram_vector(acts[a]), _gram_vector(acts[b]), dim=0)
    assert torch.allclose(value.sum(), torch.as_tensor(total), atol=1e-5)


def test_diversity_groups_are_independent(state):
    acts = state.activations["layer"]
    value = obj.diversity("layer", [[0, 1], [2, 3]])(state)
    cosine = F.cosine_similarity(_gram_vector(acts[2]), _gram_vector(acts[3]), dim=0)
    assert torch.allclose(value[2:], -cosine.expand(2), atol=1e-6)
    with pytest.raises(obj.ObjectiveError, match="equal sizes"):
        obj.diversity("layer", [[0, 1, 2], [3]])


def test_alignment_penalizes_neighbour_differences(state):
    acts = state.activations["layer"]
    value = obj.alignment("layer", [0, 1, 2])(state)
    gap01 = (acts[0] - acts[1]).pow(2).mean()
    gap12 = (acts[1] - acts[2]).pow(2).mean()
    expected = -torch.stack([gap01 / 2, (gap01 + gap12) / 2, gap12 / 2, torch.tensor(0.0)])
    assert torch.allclose(value, expected, atol=1e-6)


def test_interpolation_weights_are_convex_across_the_row(state):
    acts = state.activations["layer"]
    first, second = obj.channel("layer", 0), obj.channel("layer", 1)
    value = obj.interpolate(first, second, [1, 2, 3], size=4)(state)
    means = acts[:, :2].mean(dim=(2, 3))
    expected = torch.stack([torch.tensor(0.0), means[1, 0], (means[2, 0] + means[2, 1]) / 2, means[3, 1]])
    assert torch.allclose(value, expected, atol=1e-6)


def test_penalties_on_the_images(state):
    x = state.images
    assert torch.allclose(obj.l1()(state), (x - 0.5).abs().mean(dim=(1, 2, 3)))
    tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean(
        dim=(1, 2, 3)
    )
    assert torch.allclose(obj.total_variation()(state), tv)
    flat = torch.full((1, 3, 4, 4), 0.3)
    assert obj.blur()(obj.StepState({}, flat)).item() == pytest.approx(0.0, abs=1e-10)
    assert torch.all(obj.blur()(state) > 0)


def test_arithmetic_composes_values_and_layers(state):
    a, b = obj.channel("layer", 0), obj.class_logit(2)
    combined = 2 * a - b + 1.0
    assert torch.allclose(combined(state), 2 * a(state) - b(state) + 1.0)
    assert torch.allclose((-a)(state), -a(state))
    assert combined.layers == {"layer", LOGITS}
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5])
    assert torch.allclose((a * weights)(state), a(state) * weights)
    assert torch.allclose(sum([a, b])(state), a(state) + b(state))


def test_bad_bindings_are_explained(state):
    with pytest.raises(obj.ObjectiveError, match="2 channels given for 3"):
        obj.channel("layer", [0, 1], batch=[0, 1, 2])(state)
    with pytest.raises(obj.ObjectiveError, match="batch elements"):
        obj.channel("layer", 0, batch=9)(state)
    with pytest.raises(obj.ObjectiveError, match="do not match"):
        (obj.channel("layer", 0) * torch.ones(3))(state)


def test_validation_against_a_model():
    model = load_model("tiny-cnn")
    obj.channel("conv2", 31).validate(model)
    with pytest.raises(obj.ObjectiveError, match=r"channel 32 is out of range.*32 channels"):
        obj.channel("conv2", 32).validate(model)
    with pytest.raises(UnknownLayerError, match="conv2"):
        obj.channel("conv_2", 0).validate(model)
    with pytest.raises(obj.ObjectiveError, match="class 10 is out of range.*10 classes"):
        obj.class_logit(10).validate(model)
    with pytest.raises(obj.ObjectiveError, match="3 components"):
        obj.direction("conv2", torch.ones(3)).validate(model)
