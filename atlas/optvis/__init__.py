"""Feature visualization by optimization: parameterizations, transforms, objectives, rendering."""

from atlas.optvis.objectives import Objective, ObjectiveError
from atlas.optvis.param import ParamError, maco_magnitude, make_param
from atlas.optvis.recipes import (
    RenderedImage,
    iter_channel_sets,
    random_directions,
    render_channel_sets,
    render_channels,
    render_directions,
    render_pair,
    render_vectors,
)
from atlas.optvis.render import RenderError, RenderResult, render
from atlas.optvis.transforms import TransformError

__all__ = [
    "Objective",
    "ObjectiveError",
    "ParamError",
    "RenderError",
    "RenderResult",
    "RenderedImage",
    "TransformError",
    "iter_channel_sets",
    "maco_magnitude",
    "make_param",
    "random_directions",
    "render",
    "render_channel_sets",
    "render_channels",
    "render_directions",
    "render_pair",
    "render_vectors",
]
