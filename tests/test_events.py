"""The usual shape of an Audit Trail object is read by a regular expression, everything else by
the JSON parser and `validate`: both paths must give the same event, warnings included."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ot_hook.events import (
    _USUAL_SHAPE,
    AuditEvent,
    InvalidDelivery,
    decode_text,
    loads,
    parse_body,
    validate,
)

SAMPLE = (b'{"Id": 1947, "ActionType": 4, "RecordType": 7, "UniqueId": 890, '
          b'"Description": "Status Changed to Approved", "Username": "Jimmy Hendrix", '
          b'"ActionDate": "2020-12-08T22:13:42.8181534Z"}')


def full_path(body: bytes) -> AuditEvent | str:
    """What the JSON parser and `validate` make of `body` (the reason when refused)."""
    try:
        return validate(loads(decode_text(body)))
    except InvalidDelivery as exc:
        return f"{exc.status} {exc.reason}"


def either_path(body: bytes) -> AuditEvent | str:
    try:
        return parse_body(body)
    except InvalidDelivery as exc:
        return f"{exc.status} {exc.reason}"


def test_the_sample_takes_the_usual_path_and_agrees() -> None:
    assert _USUAL_SHAPE.match(SAMPLE.decode())
    assert parse_body(SAMPLE) == full_path(SAMPLE)
    assert parse_body(SAMPLE).warnings == ()


@pytest.mark.parametrize("body", [
    SAMPLE.replace(b"890", b'"SO-890"'),                      # UniqueId as text
    SAMPLE.replace(b": 4", b": 99").replace(b": 7", b": 77"),  # unknown codes
    SAMPLE.replace(b"2020-12-08T22:13:42.8181534Z", b"yesterday"),
    SAMPLE.replace(b"2020-12-08T22", b"2020-13-08T22"),       # month 13
    SAMPLE.replace(b"Jimmy", "Jürgen 水".encode()),           # not ASCII
    SAMPLE.replace(b", ", b",\r\n\t "),                      # JSON whitespace
    b"\xef\xbb\xbf" + SAMPLE,                                 # a byte order mark
    SAMPLE.replace(b"1947", b"-0"),
    SAMPLE.replace(b"1947", b"999999999999999999"),           # 18 digits
])
def test_usual_shapes_agree_with_the_full_path(body: bytes) -> None:
    assert _USUAL_SHAPE.match(decode_text(body)), body
    assert parse_body(body) == full_path(body)


@pytest.mark.parametrize("body", [
    SAMPLE.replace(b"Jimmy", b'Ji\\"mmy'),                    # an escape
    SAMPLE.replace(b"Jimmy Hendrix", b""),                    # empty text
    SAMPLE.replace(b"890", b"890.5"),                         # not a whole number
    SAMPLE.replace(b"1947", b"9223372036854775808"),          # beyond 64 bits
    SAMPLE.replace(b"1947", b"01947"),                        # not JSON
    SAMPLE.replace(b'"Jimmy Hendrix"', b"null"),
    SAMPLE[:-1] + b', "Extra": 1}',
    SAMPLE[:-1] + b', "Id": 2}',                              # a key twice
    SAMPLE.replace(b"Jimmy", b"Jim\tmy"),                     # a raw control character
])
def test_other_shapes_take_the_full_path(body: bytes) -> None:
    assert not _USUAL_SHAPE.match(decode_text(body))
    assert either_path(body) == full_path(body)


_text = st.text(st.sampled_from('aZ 09-:."\\\t\x1f\x7fé水\U0001f600'), max_size=6)
_number = st.one_of(st.integers(-(10**19), 10**19), st.sampled_from([0, -1, 4, 7, 99]))


@st.composite
def near_usual_bodies(draw: st.DrawFn) -> bytes:
    """Bodies of the usual shape and small steps away from it."""
    values = {
        "Id": draw(_number), "ActionType": draw(_number), "RecordType": draw(_number),
        "UniqueId": draw(st.one_of(_number, _text)),
        "Description": draw(_text), "Username": draw(_text),
        "ActionDate": draw(st.one_of(_text, st.just("2020-12-08T22:13:42.8181534Z"))),
    }
    space = draw(st.sampled_from(["", " ", "\n  ", "\t"]))
    body = "{" + f",{space}".join(
        f"{space}{json.dumps(k)}{space}:{space}{json.dumps(v, ensure_ascii=draw(st.booleans()))}"
        for k, v in values.items()) + space + "}"
    return body.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(near_usual_bodies())
def test_both_paths_agree_on_generated_bodies(body: bytes) -> None:
    assert either_path(body) == full_path(body)


def test_a_raw_control_character_is_named_without_a_dangling_at() -> None:
    from ot_hook.events import InvalidDelivery

    with pytest.raises(InvalidDelivery) as info:
        parse_body(b'{"Id": "\x01"}')
    assert info.value.reason == "invalid JSON at line 1 column 9: Invalid control character"
