"""Spec sections validated by pydantic, its errors turned back into the spec's own words.

Each field of a spec section is annotated with one of the types below: pydantic checks the type
(strictly: `true` is no integer, "3" is no number), the bounds (`Ge`, `Gt`, `Interval`) and the
choices (`Literal`, or a registry for the names plugins may add). `Expect` says how the field's
type reads in a message; `problems` maps pydantic's errors to what a user can act on. pydantic
knows nothing of TOML lines: the caller turns each problem's key into a line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

from pydantic import AfterValidator, BeforeValidator, Strict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from atlas.core.registry import close_matches


@dataclass(frozen=True)
class Expect:
    """Annotated metadata: the expected type in words, how a value is shown, a unit for bounds."""

    phrase: str
    shown: Callable[[Any], Any] = lambda value: value
    unit: str = ""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one key; `phase` 0 (unknown key, wrong type) is reported before 1."""

    key: str
    message: str
    phase: int


def _floats(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


def _path(value: Any) -> Path | None:
    if not isinstance(value, str):
        raise PydanticCustomError("path_type", "expected a path string")
    return Path(value) if value else None


def not_allowed(fix: str) -> PydanticCustomError:
    """A value of the right type that is out of range: shown as `<value> is not allowed: <fix>`."""
    return PydanticCustomError("not_allowed", "{fix}", {"fix": fix})


def plain(message: str) -> PydanticCustomError:
    """A problem whose message stands on its own (it names the value itself, or needs none)."""
    return PydanticCustomError("plain", "{message}", {"message": message})


def one_of(choices: Callable[[], Sequence[str]]) -> AfterValidator:
    """A name checked against a list asked at validation time (a registry grows with plugins)."""

    def check(value: str) -> str:
        names = choices()
        if value not in names:
            raise not_allowed(f"choose one of {', '.join(names)}")
        return value

    return AfterValidator(check)


def each_of(what: str, choices: Callable[[], Sequence[str]]) -> AfterValidator:
    """Every name of an array checked against a list, the first unknown one named with matches."""

    def check(values: tuple[str, ...]) -> tuple[str, ...]:
        names = list(choices())
        for value in values:
            if value not in names:
                raise plain(
                    f"unknown {what} {value!r}. {close_matches(value, names)}Choose from {', '.join(names)}"
                )
        return values

    return AfterValidator(check)


def rule(check: Callable[[Any], bool], fix: str) -> AfterValidator:
    """A condition on a value that bounds cannot say (e.g. ordered quantiles)."""

    def validate(value: Any) -> Any:
        if not check(value):
            raise not_allowed(fix)
        return value

    return AfterValidator(validate)


def _at_least_one_or_auto(value: int | str) -> int | str:
    if isinstance(value, int) and value < 1:
        raise plain('must be at least 1 or "auto"')
    return value


Bool = Annotated[bool, Strict(), Expect("true or false")]
Int = Annotated[int, Strict(), Expect("an integer")]
Number = Annotated[float, Strict(), Expect("a number", float)]
Text = Annotated[str, Strict(), Expect("a string")]
OptionalText = Annotated[str | None, Strict(), Expect("a string")]
OptionalPath = Annotated[Path | None, BeforeValidator(_path), Expect("a path string")]
Names = Annotated[tuple[Annotated[str, Strict()], ...], Expect("an array of strings")]
NumberPair = Annotated[
    tuple[Annotated[float, Strict()], Annotated[float, Strict()]],
    Expect("an array of two numbers like [0.25, 0.75]", _floats),
]


def _input_side(value: int | None) -> int | None:
    if value is not None and not 8 <= value <= 4096:
        raise plain(f"{value!r} is not allowed: must be between 8 and 4096 pixels")
    return value


OptionalSide = Annotated[
    Annotated[int, Strict()] | None, Expect("an integer", unit=" pixels"), AfterValidator(_input_side)
]
OptionalTriple = Annotated[
    tuple[Annotated[float, Strict()], Annotated[float, Strict()], Annotated[float, Strict()]] | None,
    Expect("an array of three numbers (red, green, blue) like [0.485, 0.456, 0.406]", _floats),
]
ChannelPairs = Annotated[
    tuple[tuple[Annotated[str, Strict()], Annotated[int, Strict()], Annotated[int, Strict()]], ...],
    Expect('an array of [layer, channel_a, channel_b] like [["mixed4a", 1, 2]]'),
]
IntOrAuto = Annotated[
    Annotated[int, Strict()] | Literal["auto"],
    Expect('an integer or "auto"'),
    AfterValidator(_at_least_one_or_auto),
]
NumberOrAuto = Annotated[Annotated[float, Strict()] | Literal["auto"], Expect('a number or "auto"')]


def type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _bound_fix(metadata: Iterable[Any], unit: str) -> str:
    """The fix for a value outside the field's bounds, in the words the spec has always used."""
    bounds = {
        name: getattr(item, name)
        for item in metadata
        for name in ("ge", "gt", "le")
        if getattr(item, name, None) is not None
    }
    if "ge" in bounds and "le" in bounds:
        return f"must be between {bounds['ge']} and {bounds['le']}{unit}"
    if bounds.get("gt") == 0:
        return "must be positive"
    if bounds.get("ge") == 0:
        return "must be >= 0"
    return f"must be at least {bounds['ge']}"


def _metadata(cls: type) -> dict[str, list[Any]]:
    """Each field's Annotated metadata, nested aliases flattened (Expect, bounds, validators)."""
    hints = get_type_hints(cls, include_extras=True)
    found: dict[str, list[Any]] = {}
    for f in fields(cls):
        items: list[Any] = []
        hint = hints[f.name]
        while getattr(hint, "__metadata__", None) is not None:
            items.extend(hint.__metadata__)
            hint = get_args(hint)[0]
        found[f.name] = items
    return found


def validate_section(
    cls: type, raw: dict[str, Any], unknown_hint: Callable[[str, list[str]], str]
) -> tuple[Any, list[Problem]]:
    """Build `cls` from a TOML table; on failure, None and the problems in the order of `raw`.

    `unknown_hint(key, valid)` words the help for an unknown key (close matches, or a key that
    belongs elsewhere in the file).
    """
    try:
        return TypeAdapter(cls).validate_python(raw), []
    except ValidationError as err:
        errors = err.errors()
    metadata = _metadata(cls)
    valid = list(metadata)
    problems: dict[str, Problem] = {}
    for error in errors:
        key = str(error["loc"][0])
        if key in problems:
            continue  # a union reports one error per member; the first says it all
        if key not in metadata:
            message = f"unknown key. {unknown_hint(key, valid)}Valid keys: {', '.join(valid)}"
            problems[key] = Problem(key, message, 0)
            continue
        expect = [m for m in metadata[key] if isinstance(m, Expect)][-1]  # the outermost wins
        value = raw[key]
        kind = error["type"]
        if kind == "plain":
            problems[key] = Problem(key, error["ctx"]["message"], 1)
        elif kind == "not_allowed":
            problems[key] = Problem(key, f"{expect.shown(value)!r} is not allowed: {error['ctx']['fix']}", 1)
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            fix = _bound_fix(metadata[key], expect.unit)
            problems[key] = Problem(key, f"{expect.shown(value)!r} is not allowed: {fix}", 1)
        else:
            message = f"expected {expect.phrase}, got {type_name(value)} {value!r}"
            problems[key] = Problem(key, message, 0)
    order = {key: n for n, key in enumerate(raw)}
    return None, sorted(problems.values(), key=lambda p: (p.phase, order.get(p.key, len(order))))
