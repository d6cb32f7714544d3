"""Named objectives: the one table behind `render.objectives`, `atlas render --objective` and the
site's optimized-image columns.

An objective kind turns (layer, channels, batch elements) into an `Objective`; `render_channels`
renders every per-channel kind a job asks for and the site shows each as a column (its place and
headings are written into job.json, so the site needs no import of the code that made it). A
plugin adds one with `@register_objective(...)` from its own module (see atlas.core.registry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from atlas.core.registry import Registry
from atlas.optvis import objectives as obj

Term = Callable[[str, int | Sequence[int], obj.Batch], obj.Objective]


@dataclass(frozen=True)
class ObjectiveKind:
    """How to build one named objective and how the atlas shows it.

    `term(layer, channels, batch)` scores the bound elements, one channel each (kinds sharing a
    `term` function are optimized as one vectorized term). `per_channel` kinds are what a job
    renders for every channel; the others (a whole layer, a class) exist for `atlas render` only.
    `diverse` kinds render `render.diversity` images per channel, pushed apart by the diversity
    term. `side` puts the site column beside the top ("positive") or bottom ("negative") dataset
    examples; `labels` are its headings in the appendix and spectrum views; `readout` is what
    `atlas render` reports: the channel's mean, the layer's mean square, or the class logit.
    """

    term: Term
    labels: tuple[str, str] = ("", "")
    per_channel: bool = True
    diverse: bool = False
    side: Literal["positive", "negative"] = "positive"
    readout: Literal["channel", "layer", "logits"] = "channel"


OBJECTIVES: Registry[ObjectiveKind] = Registry("objective", obj.ObjectiveError)


def register_objective(
    name: str,
    labels: tuple[str, str],
    *,
    per_channel: bool = True,
    diverse: bool = False,
    side: Literal["positive", "negative"] = "positive",
    readout: Literal["channel", "layer", "logits"] = "channel",
) -> Callable[[Term], Term]:
    """Decorator: register `term` as objective `name` (see `ObjectiveKind` for the options)."""

    def register(term: Term) -> Term:
        OBJECTIVES.register(name, ObjectiveKind(term, labels, per_channel, diverse, side, readout))
        return term

    return register


def channel_objectives() -> tuple[str, ...]:
    """The objectives a job may list in `render.objectives`, in registration order."""
    return tuple(name for name, kind in OBJECTIVES.items() if kind.per_channel)


def _neuron(layer: str, channels: int | Sequence[int], batch: obj.Batch = None) -> obj.Objective:
    return obj.neuron(layer, channels, batch=batch)


def _negative(layer: str, channels: int | Sequence[int], batch: obj.Batch = None) -> obj.Objective:
    return -obj.channel(layer, channels, batch=batch)


def _deepdream(layer: str, channels: int | Sequence[int], batch: obj.Batch = None) -> obj.Objective:
    return obj.deepdream(layer)


def _logit(layer: str, label: int | Sequence[int], batch: obj.Batch = None) -> obj.Objective:
    return obj.class_logit(label)


def _probability(layer: str, label: int | Sequence[int], batch: obj.Batch = None) -> obj.Objective:
    return obj.class_probability(label)


# Registration order is the order of `render.objectives`' default and of `--objective`'s choices.
register_objective("channel", ("Channel", "Positive optimized"))(obj.channel)
register_objective("neuron", ("Neuron", "Neuron"))(_neuron)
register_objective("negative", ("Negative", "Negative optimized"), side="negative")(_negative)
register_objective("diversity", ("Diversity", "Diversity"), diverse=True)(obj.channel)
register_objective("deepdream", ("DeepDream", "DeepDream"), per_channel=False, readout="layer")(_deepdream)
register_objective("logit", ("Logit", "Logit"), per_channel=False, readout="logits")(_logit)
register_objective("probability", ("Probability", "Probability"), per_channel=False, readout="logits")(
    _probability
)
