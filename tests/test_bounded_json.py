"""base/bounded_json.py with plain values: what a hostile writer of JSON sends (nesting that makes
json.loads raise RecursionError, a huge text, brackets hidden in strings), and the depth rule held
to the CNI shim's on any bytes."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from base.bounded_json import MAX_DEPTH, BadJson, JsonTooLarge, loads, too_deep
from cni import shim


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def test_plain_json_is_parsed():
    assert loads('{"a": [1, {"b": "x"}]}', 1000) == {"a": [1, {"b": "x"}]}
    assert loads(b'[1, 2]', 1000) == [1, 2]
    assert loads(nested(MAX_DEPTH), 1000) is not None  # exactly the limit


def test_nesting_that_makes_json_loads_raise_recursion_error_is_bad_json():
    attack = nested(100_000)
    with pytest.raises(RecursionError):
        json.loads(attack)  # what every caller did before: not a ValueError
    with pytest.raises(BadJson, match="more than 64 deep"):
        loads(attack, 1 << 20)
    with pytest.raises(BadJson, match="more than 64 deep"):
        loads('{"a":' * 65 + "1" + "}" * 65, 1 << 20)
    with pytest.raises(BadJson, match="the annotation nests"):
        loads(nested(MAX_DEPTH + 1), 1 << 20, what="the annotation")
    with pytest.raises(BadJson, match="more than 3 deep"):
        loads(nested(4), 100, max_depth=3)


def test_unterminated_nesting_is_refused_before_the_parser():
    assert too_deep(b"[" * 65) and not too_deep(b"[" * 64)


def test_brackets_in_strings_do_not_count():
    text = json.dumps(["[" * 1000, "{" * 1000, 'a \\" [[[[ " quote'])
    assert loads(text, 1 << 20)[0] == "[" * 1000
    assert not too_deep(b'["\\\\"' + b"]" + b"[" * 10 + b"]" * 10)  # an escaped backslash ends a string


def test_a_text_over_the_size_is_too_large_before_it_is_scanned():
    with pytest.raises(JsonTooLarge, match="larger than 1024 bytes"):
        loads(" " * 1025, 1024)
    with pytest.raises(JsonTooLarge):
        loads("\u00e9" * 600, 1024)  # 600 characters, 1200 bytes
    with pytest.raises(JsonTooLarge):
        loads(b"[" + b"1," * 600 + b"1]", 1024)
    assert issubclass(JsonTooLarge, BadJson) and issubclass(BadJson, ValueError)


@pytest.mark.parametrize("text", ["", "not json", "[1,", '{"a": 1} x', "\ud800", b"\xff\xfe\x00"])
def test_malformed_is_bad_json(text):
    with pytest.raises(BadJson, match="not valid JSON"):
        loads(text, 1000)


JSONISH = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b"a", b" "]),
                   max_size=300).map(b"".join)


@given(st.one_of(JSONISH, st.binary(max_size=300)), st.integers(min_value=0, max_value=8))
def test_the_depth_rule_is_the_cni_shims(data, limit):
    assert too_deep(data, limit) == shim.too_deep(data, limit)
