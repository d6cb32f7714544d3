"""SAEs saved by SAELens's own code load as SAELens computes them: the format users have, not our
reading of it. Skipped where sae-lens is not installed (`pip install sae-lens`)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.plan.sae import SaeEncoder, SaeError, load_sae

sae_lens = pytest.importorskip("sae_lens")

ARCHITECTURES = {
    "standard": lambda d_in, d_sae, extra: sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(d_in, d_sae, **extra)
    ),
    "topk": lambda d_in, d_sae, extra: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in, d_sae, **extra)),
    "jumprelu": lambda d_in, d_sae, extra: sae_lens.JumpReLUSAE(
        sae_lens.JumpReLUSAEConfig(d_in, d_sae, **extra)
    ),
}


def _randomized(sae: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn (SAELens initializes b_enc and b_dec at zero and W_dec from W_enc,
    which would hide a bias applied in the wrong place); thresholds positive and mid-range."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            values = torch.randn(parameter.shape, generator=generator) * 0.5
            parameter.copy_(values.abs() * 0.3 if "threshold" in name else values)
    return sae


@settings(max_examples=12, deadline=None)
@given(
    architecture=st.sampled_from(sorted(ARCHITECTURES)),
    d_in=st.integers(2, 24),
    factor=st.sampled_from([0.5, 1, 4, 16]),
    shift=st.booleans(),
    rescale=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_an_sae_saved_by_sae_lens_encodes_as_sae_lens_does(
    tmp_path_factory, architecture: str, d_in: int, factor: float, shift: bool, rescale: bool, seed: int
) -> None:
    d_sae = max(1, int(d_in * factor))
    extra: dict = {"apply_b_dec_to_input": shift}
    if architecture == "topk":
        extra |= {"k": max(1, d_sae // 3), "rescale_acts_by_decoder_norm": rescale}
    sae = _randomized(ARCHITECTURES[architecture](d_in, d_sae, extra), seed)
    folder = tmp_path_factory.mktemp("sae")
    sae.save_model(folder)
    loaded = load_sae(folder, "layer", d_in)
    assert loaded.features == d_sae
    maps = torch.randn(3, d_in, 5, 4, generator=torch.Generator().manual_seed(seed + 1))
    ours = SaeEncoder(loaded)(maps)  # (B, K, H, W)
    with torch.no_grad():
        theirs = sae.encode(maps.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours > 0).any() or architecture == "jumprelu"  # the comparison was not all zeros


@pytest.mark.parametrize(
    "setting", [{"normalize_activations": "layer_norm"}, {"reshape_activations": "hook_z"}]
)
def test_an_sae_that_normalizes_its_input_is_refused_with_the_fix(tmp_path, setting: dict) -> None:
    sae = _randomized(ARCHITECTURES["standard"](8, 16, setting), 0)
    sae.save_model(tmp_path)
    name = next(iter(setting))
    with pytest.raises(SaeError, match=rf'{name} = .*save the SAE with {name} = "none"'):
        load_sae(tmp_path, "layer", 8)
