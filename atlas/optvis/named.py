"""Named objectives: the one table behind `render.objectives`, `atlas render --objective` and the
site's optimized-image columns.

An objective kind turns (layer, channels, batch elements) into an `Objective`; `render_channels`
renders every per-channel kind a job asks for and the site shows each as a column (its place and
headings are written into job.json, so the site needs no import of the code that made it). A
plugin adds one with `@register_objective(...)` from its own module (see atlas.core.registry).
"""

from __future__ import annotations

import re
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


# Objective text (`atlas render --objective`, `atlas.visualize`): weighted targets joined by + and -.
_TERM = re.compile(
    r"\s*(?P<sign>[+-])?\s*(?:(?P<weight>\d+(?:\.\d*)?(?:e-?\d+)?|\.\d+)\s*\*\s*)?(?P<target>[\w.@]+(?::[\w.@]+)*)\s*"
)


def _forms() -> str:
    """How each registered objective is written in a string, for the error that lists them."""
    single = [(name, kind) for name, kind in OBJECTIVES.items() if not kind.diverse]
    channel = "|".join(name for name, kind in single if kind.readout == "channel")
    layer = ", ".join(f"{name}:layer" for name, kind in single if kind.readout == "layer")
    logits = " or ".join(f"{name}:N" for name, kind in single if kind.readout == "logits")
    return f"{channel}:layer:channel, {layer}, {logits}"


def _target(text: str) -> obj.Objective:
    """One target: ``layer:channel`` or ``kind:layer:channel`` / ``logit:N`` / ``deepdream:layer``.

    The kinds are the registered objectives except the diverse ones, which need a set of images
    rather than a term.
    """
    parts = text.split(":")
    prefixed = len(parts) > 1 and parts[0] in OBJECTIVES and not OBJECTIVES.get(parts[0]).diverse
    name, args = (parts[0], parts[1:]) if prefixed else ("channel", parts)
    kind = OBJECTIVES.get(name)
    try:
        if kind.readout == "logits" and len(args) == 1:
            return kind.term("", int(args[0]), None)
        if kind.readout == "layer" and len(args) == 1:
            return kind.term(args[0], 0, None)
        if kind.readout == "channel" and len(args) == 2:
            return kind.term(args[0], int(args[1]), None)
    except ValueError:
        pass
    raise obj.ObjectiveError(
        f"cannot read the objective target {text!r}: write layer:channel (e.g. '_blocks.9:5'), {_forms()}"
    )


def parse_objective(text: str) -> obj.Objective:
    """A lucent-style objective string: weighted sums of targets, e.g. ``2*_blocks.9:5 - _blocks.9:7``."""
    position, total = 0, None
    while position < len(text):
        match = _TERM.match(text, position)
        if not match or match.end() == position or (total is not None and not match.group("sign")):
            raise obj.ObjectiveError(
                f"cannot read objective {text!r} at {text[position:]!r}: join terms with + or -, "
                "weights as 2*layer:channel"
            )
        term = _target(match.group("target"))
        weight = float(match.group("weight") or 1.0) * (-1.0 if match.group("sign") == "-" else 1.0)
        term = term if weight == 1.0 else weight * term
        total = term if total is None else total + term
        position = match.end()
    if total is None:
        raise obj.ObjectiveError("the objective is empty: write e.g. '_blocks.9:5' (layer:channel)")
    return total


def reports_negated(text: str) -> bool:
    """Whether `text` is one target of an objective that minimizes its unit (side "negative"):
    what it reaches is then reported as the unit's own value, as the store does."""
    kind = text.strip().split(":")[0]
    return kind in OBJECTIVES and OBJECTIVES.get(kind).side == "negative" and not re.search(r"[+*]|\s-", text)
