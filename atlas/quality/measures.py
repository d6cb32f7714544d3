"""Image measures of a rendered picture that need no dataset: high-frequency energy, diversity."""

from __future__ import annotations

import torch

from atlas.optvis.objectives import gram_cosines

# Nyquist is 0.5 cycles per pixel; power above half of it is what the article calls noise.
HIGH_FREQUENCY_CUTOFF = 0.25


def high_frequency_share(images: torch.Tensor, cutoff: float = HIGH_FREQUENCY_CUTOFF) -> torch.Tensor:
    """Share (B,) of the luminance spectral power above ``cutoff`` cycles per pixel, mean removed.

    A Hann window first: the DFT treats the image as periodic, and the jump between opposite
    edges would otherwise count as high-frequency energy in any photo. White noise scores
    1 - pi * cutoff^2 (about 0.80), a smooth photo a few hundredths.
    """
    luminance = images.float().mean(dim=1)
    luminance = luminance - luminance.mean(dim=(1, 2), keepdim=True)
    height, width = luminance.shape[-2:]
    window = (
        torch.hann_window(height, periodic=False)[:, None] * torch.hann_window(width, periodic=False)[None, :]
    )
    power = torch.fft.rfft2(luminance * window).abs().pow(2)
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    high = torch.sqrt(fx * fx + fy * fy) > cutoff
    # rfft2 stores only half the columns: every column but the first (and the Nyquist one for
    # even widths) stands for two bins of the full spectrum.
    weight = torch.full((width // 2 + 1,), 2.0)
    weight[0] = 1.0
    if width % 2 == 0:
        weight[-1] = 1.0
    weighted = power * weight
    return weighted[:, high].sum(dim=1) / weighted.flatten(1).sum(dim=1).clamp_min(1e-20)


def diversity_similarity(activations: torch.Tensor) -> float:
    """Mean pairwise cosine of the Gram matrices of a diversity set's activations (g, C, H, W).

    The quantity the diversity objective pushes down: near 1 means the set repeats one picture,
    lower means its members differ in style. NaN for a set of fewer than two.
    """
    count = activations.shape[0]
    if count < 2:
        return float("nan")
    cosines = gram_cosines(activations)
    off_diagonal = cosines.sum() - cosines.diagonal().sum()
    return float(off_diagonal / (count * (count - 1)))
