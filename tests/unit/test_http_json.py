"""JSON bodies in and out of the API clients (sync.clients.http): orjson, with the
standard library for what orjson refuses, so no body that ``json`` reads or writes is
refused."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.clients.http import decode_json, encode_json, parse_json_body

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_round_trip_as_the_standard_library(value: Any) -> None:
    assert json.loads(encode_json(value)) == value
    assert decode_json(json.dumps(value).encode()) == value
    assert decode_json(json.dumps(value, ensure_ascii=False).encode()) == value


def test_what_orjson_refuses_the_standard_library_takes() -> None:
    big = 2**70
    assert decode_json(b'{"n": 1180591620717411303424}') == {"n": big}
    assert json.loads(encode_json({"n": big})) == {"n": big}
    assert json.loads(encode_json({1: "a"})) == {"1": "a"}
    assert math.isnan(decode_json(b"[NaN]")[0])


def test_non_ascii_is_utf8() -> None:
    assert encode_json({"short_description": "Störung 障害"}).decode("utf-8") == (
        '{"short_description":"Störung 障害"}'
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "malformed JSON in the answer"),
        (b"\xff\xfe{}", "malformed JSON in the answer"),
        (b'{"a": 1', "malformed JSON in the answer"),
    ],
)
def test_malformed_answers_are_problems(body: bytes, problem: str) -> None:
    value, found = parse_json_body("application/json", body)
    assert value is None
    assert found is not None and found.startswith(problem)


def test_empty_and_non_json_answers() -> None:
    assert parse_json_body("application/json", b"  ") == (None, None)
    assert parse_json_body("text/html", b"<html>") == (None, "expected JSON, got text/html")
    assert parse_json_body("application/json", b'{"result": []}') == ({"result": []}, None)


def test_what_neither_encodes_is_refused_as_before() -> None:
    @dataclasses.dataclass
    class Thing:
        a: int

    for value in ({"at": datetime(2026, 12, 1, tzinfo=UTC)}, [Thing(1)], {"x": object()}):
        with pytest.raises(TypeError):
            json.dumps(value)
        with pytest.raises(TypeError):
            encode_json(value)
