"""Validators name the argument, its value and the accepted range."""

from __future__ import annotations

import math

import pytest

from privaudit import _validate


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "1", None, True])
def test_positive(bad):
    with pytest.raises(ValueError, match="sigma"):
        _validate.positive(sigma=bad)


def test_in_range_message():
    with pytest.raises(ValueError, match=r"Expected sampling_rate=1.5 in \[0, 1\]\."):
        _validate.in_range(0, 1, sampling_rate=1.5)
    with pytest.raises(ValueError, match=r"delta=1.0 in \(0, 1\)"):
        _validate.in_range(0, 1, lo_open=True, hi_open=True, delta=1.0)
    _validate.in_range(0, 1, sampling_rate=1)


@pytest.mark.parametrize("bad", [1.0, 2.5, -1, "3", True])
def test_integer(bad):
    with pytest.raises(ValueError, match="steps"):
        _validate.integer(minimum=0, steps=bad)
    _validate.integer(minimum=0, steps=0)


@pytest.mark.parametrize("bad", ["gpu", "", "CPU", "mps"])
def test_device_name(bad):
    with pytest.raises(ValueError, match=r"device=.*\['auto', 'cpu', 'cuda', 'cuda:N'\]"):
        _validate.device_name(device=bad)
    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        _validate.device_name(device=ok)


def test_settings_from_mapping_names_unknown_keys():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class S:
        a: int = 1
        b: str = "x"

    assert _validate.settings_from_mapping(S, {"a": 2}, what="demo") == S(a=2)
    with pytest.raises(ValueError, match=r"Unknown demo setting\(s\) \['c'\]; accepted: \['a', 'b'\]"):
        _validate.settings_from_mapping(S, {"a": 2, "c": 3}, what="demo")
