"""Option values converted without Pydantic give what Typer's own converters give."""

from __future__ import annotations

import pytest

from modernbert_cli import cli, coercion

VALUES = [
    *("0", "1", "10", "007", "-1", "+1", " 1", "1 ", "1_000", "1e3", "1.5", "0.5", ".5", "5."),
    *("0.01", "0.001", "nan", "inf", "-inf", "99999999999999999999", "١٢", "", "abc", "x"),
    *("cosine", "COSINE", "int8", "none", "auto", "jsonl", "ü", "- "),
    *(0, 1, 10, -3, True, False, 2.5, 0.0, 30.0, 1e-9),
    *(("a", "b"), ("a",), (), ["a", "b"], ("a", 1)),
]


def typer_parameters():
    command = cli._command()
    return [p for p in coercion._parameters(command) if getattr(p, "type_descriptor", None)]


def test_every_option_of_the_cli_gets_the_light_converter():
    pytest.importorskip("typer._adapters")
    params = typer_parameters()
    assert params
    light = [p for p in params if type(p._runtime_param).__name__ == "LightRuntimeParam"]
    assert len(light) == len(params), [p.name for p in params if p not in light]


def test_light_conversion_equals_typers_own_wherever_it_answers():
    typer_coercion = pytest.importorskip("typer._coercion")
    pytest.importorskip("typer._adapters")
    checked = 0
    for param in typer_parameters():
        descriptor = param.type_descriptor
        own = typer_coercion.build_runtime_param(descriptor)
        ctx = cli.typer.Context(cli._command())
        for value in VALUES:
            try:
                light = coercion._convert(
                    descriptor.annotation, descriptor.parameter_info, value, ctx
                )
            except coercion._Unsure:
                continue
            expected = own._coerce_value(value, param=param, ctx=ctx)
            assert (light, type(light)) == (expected, type(expected)), (param.name, value)
            checked += 1
    assert checked > 100


def test_a_typer_it_was_not_checked_against_keeps_its_own_converters(monkeypatch):
    monkeypatch.setattr(cli.typer, "__version__", "0.30.0")
    command = cli.typer.main.get_command(cli.app)
    coercion.install(command)
    params = [p for p in coercion._parameters(command) if getattr(p, "type_descriptor", None)]
    assert params
    assert all(getattr(p, "_runtime_param", None) is None for p in params)
