"""Image parameterizations: what the optimizer actually changes to produce a batch of images.

Every parameterization is an ``nn.Module`` whose ``forward()`` returns a batch of RGB images
(B, 3, H, W) in [0, 1]. Changing the parameterization changes the geometry of steepest descent
(the article's "preconditioning"), not the objective.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atlas.core.errors import AtlasError
from atlas.core.registry import Registry
from atlas.models.devices import to_device

# Square root of the colour covariance of ImageNet pixels (columns: decorrelated components),
# the empirical statistic published with lucid; mixing through it makes the optimizer step in a
# space where the three colour components are uncorrelated.
IMAGENET_COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
# lucid scales the initial spectrum and the decorrelated image down by these constants so that a
# sigmoid of the result starts as a near-grey image with faint structure.
SPECTRUM_INIT_STD = 0.01
FOURIER_IMAGE_SCALE = 0.25


class ParamError(AtlasError, ValueError):
    """A parameterization that cannot be built from the given options."""


def decorrelate_colors(x: torch.Tensor) -> torch.Tensor:
    """Map (B, 3, H, W) values from the decorrelated colour basis to RGB (still unbounded)."""
    matrix = to_device(IMAGENET_COLOR_CORRELATION_SQRT, x.device, x.dtype)
    matrix = matrix / matrix.norm(dim=0).max()
    return torch.einsum("ij,bjhw->bihw", matrix, x)


def to_rgb(x: torch.Tensor, decorrelate: bool) -> torch.Tensor:
    """Unbounded values to valid [0, 1] RGB; sigmoid keeps gradients alive at the edges."""
    if decorrelate:
        x = decorrelate_colors(x)
    return torch.sigmoid(x)


def frequency_scale(height: int, width: int, decay_power: float) -> torch.Tensor:
    """1 / f^decay per rfft2 bin: equalizes the energy of natural-image frequencies (H, W//2+1)."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    frequency = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(height, width))
    return frequency.pow(-decay_power)


def low_band(size: int, factor: int) -> torch.Tensor:
    """Mask (S, S//2+1) of the rfft2 bins a ``size // factor`` pixel grid can represent."""
    limit = 0.5 / factor  # that grid's Nyquist frequency, in cycles per pixel of this one
    fy = torch.fft.fftfreq(size).abs()[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    return ((fy <= limit) & (fx <= limit)).float()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


class PixelParam(nn.Module):
    """One free value per pixel and colour: the plain basis (L2 steepest descent = the gradient)."""

    def __init__(self, batch: int, size: int, seed: int = 0, decorrelate: bool = False):
        super().__init__()
        init = torch.randn(batch, 3, size, size, generator=_generator(seed)) * SPECTRUM_INIT_STD
        self.pixels = nn.Parameter(init)
        self.decorrelate = decorrelate

    def stack_key(self) -> Hashable:
        return ("pixel", tuple(self.pixels.shape[1:]), self.decorrelate)

    def forward(self) -> torch.Tensor:
        return to_rgb(self.pixels, self.decorrelate)


class FourierParam(nn.Module):
    """Spectrum scaled by 1/f^decay (+ colour decorrelation): the article's whitened basis.

    ``shared=True`` adds one spectrum common to the whole batch on top of the per-image ones,
    which the interpolation figure uses so neighbouring images stay alike.
    """

    def __init__(
        self,
        batch: int,
        size: int,
        seed: int = 0,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        shared: bool = False,
    ):
        super().__init__()
        generator = _generator(seed)
        shape = (3, size, size // 2 + 1, 2)
        own = torch.randn(batch, *shape, generator=generator) * SPECTRUM_INIT_STD
        self.spectrum = nn.Parameter(own)
        self.shared = (
            nn.Parameter(torch.randn(1, *shape, generator=generator) * SPECTRUM_INIT_STD) if shared else None
        )
        self.register_buffer("scale", frequency_scale(size, size, decay_power))
        self.size = size
        self.decay_power = decay_power
        self.decorrelate = decorrelate
        self.band: torch.Tensor | None = None

    def stack_key(self) -> Hashable | None:
        """A spectrum shared by the batch is no per-image parameter: such a batch stays whole."""
        if self.shared is not None:
            return None
        return ("fourier", self.size, self.decay_power, self.decorrelate)

    @torch.no_grad()
    def band_limit(self, factor: int) -> None:
        """Optimize only what a ``size / factor`` parameterization could hold (1: everything).

        The coefficients of a Fourier image at a lower resolution are exactly the low ones of
        this spectrum (for ``decay_power`` 1 the 1/f scale and the orthonormal transform cancel
        the change of size; otherwise they differ by one constant gain), so masking the others
        and zeroing them is a low-resolution parameterization; lifting the mask later upsamples
        it (sinc interpolation) without changing the image. The image keeps its full size.
        """
        self.band = None if factor <= 1 else low_band(self.size, factor).to(self.spectrum.device)
        if self.band is not None:
            for spectrum in (self.spectrum, self.shared):
                if spectrum is not None:
                    spectrum.mul_(self.band[..., None])

    def forward(self) -> torch.Tensor:
        spectrum = self.spectrum if self.shared is None else self.spectrum + self.shared
        coefficients = torch.view_as_complex(spectrum.float()) * self.scale
        if self.band is not None:
            coefficients = coefficients * self.band
        image = torch.fft.irfft2(coefficients, s=(self.size, self.size), norm="ortho")
        return to_rgb(image * FOURIER_IMAGE_SCALE, self.decorrelate)


def default_maco_magnitude(size: int, decay_power: float = 1.0) -> torch.Tensor:
    """The documented MACO default: a 1/f^decay amplitude per colour, the natural-image law.

    Used when no dataset magnitude is given; ``maco_magnitude`` estimates one from real images.
    """
    magnitude = frequency_scale(size, size, decay_power)
    magnitude[0, 0] = 0.0  # the mean colour comes from the standardization, not the phase
    return magnitude.expand(3, -1, -1).clone()


def maco_magnitude(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Mean Fourier amplitude (3, S, S//2+1) of [0, 1] RGB images (N, 3, H, W), mean removed.

    MACO keeps this amplitude fixed and only optimizes the phase, so the images inherit the
    frequency statistics of the dataset they were measured on.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ParamError(f"maco_magnitude needs images shaped (N, 3, H, W), got {tuple(images.shape)}")
    size = size or images.shape[-1]
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    centred = resized - resized.mean(dim=(2, 3), keepdim=True)
    return torch.fft.rfft2(centred, norm="ortho").abs().mean(dim=0)


class MacoParam(nn.Module):
    """MACO: a fixed amplitude spectrum, only the phase is optimized (Fel et al., 2023)."""

    def __init__(self, batch: int, size: int, seed: int = 0, magnitude: torch.Tensor | None = None):
        super().__init__()
        magnitude = default_maco_magnitude(size) if magnitude is None else magnitude.float()
        expected = (3, size, size // 2 + 1)
        if tuple(magnitude.shape) != expected:
            raise ParamError(
                f"MACO magnitude must be shaped {expected} for {size}px images, got "
                f"{tuple(magnitude.shape)}; compute it with maco_magnitude(images, size={size})"
            )
        phase = (torch.rand(batch, *expected, generator=_generator(seed)) * 2 - 1) * math.pi
        self.phase = nn.Parameter(phase)
        self.register_buffer("magnitude", magnitude)
        self.size = size

    def stack_key(self) -> Hashable:
        return ("maco", self.size, self.magnitude.detach().cpu().numpy().tobytes())

    def forward(self) -> torch.Tensor:
        coefficients = torch.polar(self.magnitude.expand_as(self.phase), self.phase.float())
        image = torch.fft.irfft2(coefficients, s=(self.size, self.size), norm="ortho")
        standardized = (image - image.mean(dim=(1, 2, 3), keepdim=True)) / (
            image.std(dim=(1, 2, 3), keepdim=True) + 1e-8
        )
        return torch.sigmoid(standardized)


class GeneratorParam(nn.Module):
    """A learned prior: optimize the latent of any module that maps latents to [0, 1] images."""

    def __init__(self, generator: nn.Module, batch: int, latent_shape: Sequence[int], seed: int = 0):
        super().__init__()
        self.generator = generator
        for weight in self.generator.parameters():
            weight.requires_grad_(False)
        self.latent = nn.Parameter(torch.randn(batch, *latent_shape, generator=_generator(seed)))

    def forward(self) -> torch.Tensor:
        images = self.generator(self.latent)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ParamError(f"the generator must return (B, 3, H, W) images, got {tuple(images.shape)}")
        return images


def stack(params: Sequence[nn.Module]) -> list[tuple[nn.Module, list[int]]]:
    """Parameterizations that compute alike (same ``stack_key``: kind, size and options) as one
    module each: its parameters are its members' concatenated along the batch, so a step costs
    one call and one optimizer tensor per group, not per part, and each image is what its own
    module makes. Returns (module, member indices) in order of first appearance; a module with
    no ``stack_key`` (or None) is a group of its own, used as it is. `unstack` writes back."""
    groups: dict[Hashable, list[int]] = {}
    for index, param in enumerate(params):
        key = param.stack_key() if hasattr(param, "stack_key") else None
        groups.setdefault(("alone", index) if key is None else key, []).append(index)
    return [
        (_stacked([params[i] for i in members]) if len(members) > 1 else params[members[0]], members)
        for members in groups.values()
    ]


def _stacked(params: Sequence[nn.Module]) -> nn.Module:
    merged = copy.copy(params[0])  # options and buffers shared; only the parameters are new
    merged._parameters = {
        name: nn.Parameter(torch.cat([param.get_parameter(name).detach() for param in params]))
        for name in params[0]._parameters
    }
    return merged


@torch.no_grad()
def unstack(merged: nn.Module, params: Sequence[nn.Module]) -> None:
    """Copy a `stack` group's parameters back into its members (their final values)."""
    if len(params) == 1 and params[0] is merged:
        return
    start = 0
    for param in params:
        count = 0
        for name, own in param.named_parameters(recurse=False):
            own.copy_(merged.get_parameter(name)[start : start + len(own)])
            count = len(own)
        start += count


@dataclass(frozen=True)
class ParamOptions:
    """What a job or the CLI may set on any parameterization; each kind reads what it uses."""

    seed: int = 0
    decay_power: float = 1.0
    decorrelate: bool = True
    shared: bool = False
    magnitude: torch.Tensor | None = None


@dataclass(frozen=True)
class ParamKind:
    """A registered parameterization: its builder, and whether it can share a spectrum."""

    build: Callable[[int, int, ParamOptions], nn.Module]
    shares: bool = False


PARAMS: Registry[ParamKind] = Registry("parameterization", ParamError)
PARAMS.register(
    "fourier",
    ParamKind(
        lambda batch, size, o: FourierParam(batch, size, o.seed, o.decay_power, o.decorrelate, o.shared),
        shares=True,
    ),
)
PARAMS.register("pixel", ParamKind(lambda batch, size, o: PixelParam(batch, size, o.seed, o.decorrelate)))
PARAMS.register("maco", ParamKind(lambda batch, size, o: MacoParam(batch, size, o.seed, o.magnitude)))


def make_param(
    kind: str,
    batch: int,
    size: int,
    seed: int = 0,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    shared: bool = False,
    magnitude: torch.Tensor | None = None,
) -> nn.Module:
    """Build a parameterization by the name a job spec or the CLI uses (see `PARAMS`)."""
    entry = PARAMS.get(kind)
    if shared and not entry.shares:
        sharing = ", ".join(name for name, k in PARAMS.items() if k.shares)
        raise ParamError(f"shared parameters need param {sharing!r}, not {kind!r}")
    return entry.build(batch, size, ParamOptions(seed, decay_power, decorrelate, shared, magnitude))
