"""Option values checked without Pydantic where the answer is certain.

Typer (from 0.29) converts every parameter's value through a Pydantic ``TypeAdapter``
built on first use: importing Pydantic and building the adapters costs more than
the rest of a server-backed ``similar`` together (about 330 M instructions of 1.2 G).
Most values need no such machinery: a ``str`` option given a string, an ``int``
given ``"10"``, a choice given one of its choices. :func:`install` gives each of a
command's parameters a converter that answers those cases itself and hands every
other value — anything it is not sure of, every value that would be an error — to
Typer's own converter, built only then. So results and error messages stay Typer's;
``tests/test_help.py`` checks the two agree on many values.

This leans on Typer's private ``typer._coercion``, so it is used only with the Typer
releases it was checked against (:data:`CHECKED`): with any other, or one whose
internals do not look as expected, :func:`install` does nothing and Typer converts
every value itself, slower and just as right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

# Plain decimal numbers only: signs, spaces, underscores, exponents, "nan" and the
# rest go to Typer, whose rules for them are its own.
_INT = re.compile(r"(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]{1,15})?")


# Typer minor releases whose private converter interface this module was checked against.
CHECKED = ("0.29.",)


class _Unsure(Exception):
    """This value is for Typer's own converter."""


def install(command: Any) -> None:
    """Give every parameter of ``command`` and its subcommands the light converter."""
    import typer

    if not typer.__version__.startswith(CHECKED):
        return
    try:
        from typer._coercion import RuntimeParam, build_runtime_param
    except ImportError:  # a Typer that converts values without Pydantic
        return

    @dataclass(frozen=True)
    class LightRuntimeParam(RuntimeParam):
        descriptor: Any = None
        _typer: list[Any] = field(default_factory=list)  # Typer's converter, once built

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return _convert(self.annotation, self.parameter_info, value, ctx)
            except _Unsure:
                if not self._typer:
                    self._typer.append(build_runtime_param(self.descriptor))
                return self._typer[0]._coerce_value(value, param=param, ctx=ctx)

    for param in _parameters(command):
        descriptor = getattr(param, "type_descriptor", None)
        if (
            descriptor is None
            or getattr(param, "_runtime_param", False) is not None
            or descriptor.file_annotation is not None
            or not _handled(descriptor.annotation, descriptor.parameter_info)
        ):
            continue
        param._runtime_param = LightRuntimeParam(
            parameter_info=descriptor.parameter_info,
            annotation=descriptor.annotation,
            descriptor=descriptor,
        )


def _parameters(command: Any) -> list[Any]:
    # The help option is made on first need and kept (cli._plain_help has made it).
    found = [*command.params, *filter(None, [getattr(command, "_help_option", None)])]
    for sub in getattr(command, "commands", {}).values():
        found.extend(_parameters(sub))
    return found


def _handled(annotation: Any, info: Any) -> bool:
    """Types this module converts (with no custom parser, clamping or date formats)."""
    if getattr(info, "parser", None) is not None or getattr(info, "clamp", False):
        return False
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        return item is str
    if get_origin(annotation) is Literal:
        return all(type(choice) is str for choice in get_args(annotation))
    return annotation in (str, bool, int, float)


def _convert(annotation: Any, info: Any, value: Any, ctx: Any) -> Any:
    """``value`` as Typer would convert it, or _Unsure."""
    if get_origin(annotation) is list:
        if isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
            return list(value)
        raise _Unsure
    if get_origin(annotation) is Literal:
        if (
            type(value) is str
            and value in get_args(annotation)
            and getattr(ctx, "token_normalize_func", None) is None
        ):
            return value
        raise _Unsure
    if annotation is str or annotation is bool:
        if type(value) is annotation:
            return value
        raise _Unsure
    number = _number(value, int, _INT) if annotation is int else _number(value, float, _FLOAT)
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if (low is not None and not number >= low) or (high is not None and not number <= high):
        raise _Unsure  # Typer words the error
    return number


def _number(value: Any, kind: type, pattern: re.Pattern[str]) -> Any:
    if type(value) is kind:
        return value
    if type(value) is str and pattern.fullmatch(value):
        return kind(value)
    raise _Unsure
