"""The receiver over real TLS on an ephemeral loopback port: what it answers and what it keeps."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import zlib
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from ot_hook import codes, decode
from ot_hook.serve import Receiver
from tests.support import SAMPLE, basic, post, running, sample, stored, trusting


async def test_sample_round_trips_into_the_store_byte_exact(
    receiver: Receiver, state: Path
) -> None:
    before = datetime.now(UTC)
    answer = await post(
        receiver, SAMPLE, headers={"Content-Type": "application/json", "X-Trace": "t-1"},
        path="/?source=ordertime",
    )
    after = datetime.now(UTC)
    assert answer.status == 200, answer.text
    assert "row 1" in answer.text
    [row] = stored(state)
    assert row.body == SAMPLE
    assert row.outcome == "accepted"
    assert row.http_status == 200
    assert row.content_type == "application/json"
    assert row.target == "/?source=ordertime"
    assert row.remote == "127.0.0.1"
    assert row.method == "POST"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", row.received_at)
    assert before <= datetime.fromisoformat(row.received_at) <= after
    assert row.body_size == len(SAMPLE)
    assert (row.event_id, row.action_type, row.record_type, row.unique_id) == (1947, 4, 7, "890")
    assert row.description == "Status Changed to Approved"
    assert row.username == "Jimmy Hendrix"
    assert row.action_date == "2020-12-08T22:13:42.8181534Z"
    assert row.warnings == []
    names = {name.lower() for name, _ in row.headers}
    assert "x-trace" in names
    assert "authorization" not in names


async def test_secret_headers_are_never_stored(receiver: Receiver, state: Path) -> None:
    await post(receiver, SAMPLE, headers={"Cookie": "session=abc", "X-Api-Token": "tok",
                                          "Proxy-Authorization": "Basic eA==",
                                          "X-Auth": "Basic eQ==", "X-Custom-Pass": "hunter2",
                                          "X-Session-Id": "s3ss", "X-Api_Key": "und3r",
                                          "X-Trace": "kept"})
    [row] = stored(state)
    kept = json.dumps(row.headers).lower()
    for secret in ("authorization", "cookie", "session=abc", "x-api-token", "tok\"",
                   basic().split()[1].lower(), "eq==", "hunter2", "s3ss", "und3r"):
        assert secret not in kept
    assert ("X-Trace", "kept") in row.headers


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "text/plain", None]
)
async def test_any_content_type_is_accepted(
    receiver: Receiver, state: Path, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    answer = await post(receiver, SAMPLE, headers=headers)
    assert answer.status == 200
    [row] = stored(state)
    assert row.outcome == "accepted"
    assert row.body == SAMPLE
    if content_type:
        assert row.content_type == content_type
    # Accepted all the same, but what Order Time would not send is noted.
    sent = row.content_type or ""  # with none given, aiohttp's client sends octet-stream
    assert row.warnings == ([] if sent.startswith("application/json") else
                            [f"Content-Type is {sent}, not application/json"])


async def test_a_foreign_charset_is_noted_and_named_when_the_body_is_not_utf8(
    receiver: Receiver, state: Path
) -> None:
    latin1 = "application/json; charset=ISO-8859-1"
    assert (await post(receiver, SAMPLE, headers={"Content-Type": latin1})).status == 200
    body = sample(2).replace(b"Approved", "Approuvé".encode("latin-1"))  # é is one byte
    answer = await post(receiver, body, headers={"Content-Type": latin1})
    assert answer.status == 400
    assert "it declares charset=ISO-8859-1, and deliveries are UTF-8" in answer.text
    accepted, rejected = stored(state)
    assert accepted.warnings == [
        "Content-Type declares charset=ISO-8859-1; the body was read as UTF-8"]
    assert rejected.reason is not None and "charset=ISO-8859-1" in rejected.reason


async def test_utf8_byte_order_mark_is_accepted_and_kept(receiver: Receiver, state: Path) -> None:
    body = b"\xef\xbb\xbf" + sample(description="Status Changed to Approvedé".encode().decode())
    answer = await post(receiver, body)
    assert answer.status == 200
    assert stored(state)[0].body == body


async def test_duplicate_id_is_answered_200_and_marked(receiver: Receiver, state: Path) -> None:
    first = await post(receiver, sample(7))
    other = await post(receiver, sample(8))
    again = await post(receiver, sample(7, Description="sent twice"))
    assert (first.status, other.status, again.status) == (200, 200, 200)
    assert "Duplicate of row 1" in again.text
    rows = stored(state)
    assert [r.outcome for r in rows] == ["accepted", "accepted", "duplicate"]
    assert rows[2].duplicate_of == 1
    assert rows[2].description == "sent twice"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"Id": 1,', 400, "invalid JSON at line 1 column 10"),
        (b'{"Id": 1,\n "ActionType": 4\n "RecordType": 7}', 400, "line 3 column 2"),
        (b'{"Id": NaN, "ActionType": 4, "RecordType": 7, "UniqueId": 1}', 400, "NaN"),
        (b'{"Id": Infinity, "ActionType": 4, "RecordType": 7, "UniqueId": 1}', 400, "Infinity"),
        (b'{"Id": 1, "ActionType": 4, "RecordType": 7, "UniqueId": 1e400}', 422,
         "the number 1e400 is too large to read"),
        (b'{"Id": 1, "ActionType": 4, "RecordType": 7, "UniqueId": 1, "X": -1E999}', 422,
         "-1E999 is too large"),
        (b"", 400, "empty body"),
        (b"\xff\xfe{}", 400, "not valid UTF-8"),
        (b'"just a string"', 422, "got a string"),
        (b"[" + SAMPLE + b"]", 422, "array of 1 items"),
        (b'{"Id": 1, "Id": 2, "ActionType": 4, "RecordType": 7, "UniqueId": 1}', 422, '"Id"'),
        (b'{"ActionType": 4, "RecordType": 7, "UniqueId": 1}', 422, "field Id is missing"),
        (b'{"Id": true, "ActionType": 4, "RecordType": 7, "UniqueId": 1}', 422,
         "field Id must be an integer, got a boolean"),
        (b'{"Id": 1, "ActionType": "4", "RecordType": 7, "UniqueId": 1}', 422,
         "field ActionType must be an integer, got a string"),
        (b'{"Id": 1, "ActionType": 4, "RecordType": 7.5, "UniqueId": 1}', 422, "RecordType"),
        (b'{"Id": 1, "ActionType": 4, "RecordType": 7}', 422, "field UniqueId is missing"),
        (b'{"Id": 1, "ActionType": 4, "RecordType": 7, "UniqueId": null}', 422, "UniqueId"),
        (b'{"Id": 99999999999999999999, "ActionType": 4, "RecordType": 7, "UniqueId": 1}', 422,
         "out of range"),
    ],
)
async def test_bad_input_gets_a_precise_4xx_and_is_stored_as_rejected(
    receiver: Receiver, state: Path, body: bytes, status: int, reason: str
) -> None:
    answer = await post(receiver, body)
    assert answer.status == status
    assert reason in answer.text
    [row] = stored(state)
    assert row.outcome == "rejected"
    assert row.http_status == status
    assert row.reason is not None and reason in row.reason
    assert row.body == body
    assert row.event_id is None


async def test_body_over_the_limit_is_413_and_its_first_bytes_are_kept(state: Path) -> None:
    body = SAMPLE + b" " * 5000
    async with running(state, max_body=1000) as receiver:
        answer = await post(receiver, body)
    assert answer.status == 413
    assert "1000 bytes" in answer.text
    [row] = stored(state)
    assert row.outcome == "rejected"
    assert row.body == body[:1000]
    assert row.body_size > 1000


async def test_a_broken_gzip_body_is_one_clear_log_line(state: Path) -> None:
    err = io.StringIO()
    async with running(state, stderr=err) as receiver:
        answer = await post(receiver, b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert answer.status == 400
    assert "the body could not be decoded as gzip" in answer.text
    [row] = stored(state)
    assert row.outcome == "rejected" and "decoded as gzip" in (row.reason or "")
    assert row.body == b"not gzip at all"
    assert "Unhandled exception" not in err.getvalue()


async def test_bodies_in_other_encodings_are_decoded_or_refused_and_stored(state: Path) -> None:
    """aiohttp would refuse br (without Brotli) or zstd before the handler, and nothing was
    stored: the receiver decodes bodies itself, and keeps what it refuses as rejected."""
    async with running(state) as receiver:
        answers = [
            await post(receiver, zlib.compress(SAMPLE), headers={"Content-Encoding": "deflate"}),
            await post(receiver, zlib.compress(SAMPLE)[2:-4],  # raw deflate, as some send it
                       headers={"Content-Encoding": "Deflate"}),
            await post(receiver, b"\x0b\x02\x80{}\x03", headers={"Content-Encoding": "br"}),
            await post(receiver, gzip.compress(SAMPLE),
                       headers={"Content-Encoding": "gzip, br"}),
            await post(receiver, gzip.compress(SAMPLE)[:-12],  # cut short
                       headers={"Content-Encoding": "gzip"}),
            await post(receiver, SAMPLE, headers={"Content-Encoding": "identity"}),
        ]
    assert [a.status for a in answers] == [200, 200, 415, 415, 400, 200]
    rows = stored(state)
    assert [r.outcome for r in rows] == [
        "accepted", "duplicate", "rejected", "rejected", "rejected", "duplicate"]
    assert rows[0].body == rows[1].body == SAMPLE
    assert "Content-Encoding 'br' is not supported" in (rows[2].reason or "")
    assert rows[2].body == b"\x0b\x02\x80{}\x03"  # kept as it came
    assert "decoded as gzip: the stream is cut short" in (rows[4].reason or "")


async def test_gzip_members_are_all_decoded_and_bytes_after_the_stream_refused(
        state: Path) -> None:
    half = len(SAMPLE) // 2
    members = gzip.compress(SAMPLE[:half]) + gzip.compress(SAMPLE[half:])  # as gzip allows
    junk_after = gzip.compress(sample(2)) + b"junk"
    async with running(state) as receiver:
        answers = [await post(receiver, body, headers={"Content-Encoding": encoding})
                   for body, encoding in [(members, "gzip"), (junk_after, "gzip"),
                                          (zlib.compress(sample(3)) + b"junk", "deflate"),
                                          (b"", "gzip")]]
    assert [a.status for a in answers] == [200, 400, 400, 400]
    rows = stored(state)
    assert rows[0].body == SAMPLE
    assert rows[1].reason == "the body has 4 bytes after the end of its gzip stream"
    assert rows[2].reason == "the body has 4 bytes after the end of its deflate stream"
    assert rows[1].body == junk_after  # kept as it came
    assert rows[3].reason is not None and rows[3].reason.startswith("empty body")


async def test_gzip_body_is_decoded_and_capped_after_decoding(state: Path) -> None:
    async with running(state, max_body=1000) as receiver:
        small = await post(receiver, gzip.compress(SAMPLE), headers={"Content-Encoding": "gzip"})
        bomb = gzip.compress(b" " * 10_000_000)  # about 10 KB that grows to 10 MB
        big = await post(receiver, bomb, headers={"Content-Encoding": "gzip"})
    assert small.status == 200
    assert big.status == 413
    rows = stored(state)
    assert rows[0].body == SAMPLE
    assert len(rows[1].body) == 1000


@pytest.mark.parametrize(
    ("fields", "warning"),
    [
        ({"ActionDate": "yesterday"}, "ActionDate is not ISO 8601"),
        ({"ActionDate": "2020-12-08T22:13:42.12345678Z"}, "ActionDate is not ISO 8601"),
        ({"Description": ""}, "Description is empty"),
        ({"Description": None}, "Description is null"),
        ({"ActionType": 42}, "unknown ActionType 42"),
        ({"RecordType": 4242}, "unknown RecordType 4242"),
        ({"Extra": 1}, "extra fields: Extra"),
        ({"UniqueId": 890.5}, "UniqueId is not a whole number (read as 890.5)"),
        ({"Id": 0}, "Id 0 is not positive"),
        ({"Id": -5}, "Id -5 is not positive"),
    ],
)
async def test_oddities_are_accepted_with_a_warning(
    receiver: Receiver, state: Path, fields: dict[str, object], warning: str
) -> None:
    answer = await post(receiver, sample(**fields))
    assert answer.status == 200
    [row] = stored(state)
    assert row.outcome == "accepted"
    assert any(warning in w for w in row.warnings), row.warnings


async def test_missing_username_and_text_unique_id_are_accepted(
    receiver: Receiver, state: Path
) -> None:
    obj = json.loads(SAMPLE)
    del obj["Username"]
    obj["UniqueId"] = "E402-EGGS"
    obj["RecordType"] = 100
    assert (await post(receiver, json.dumps(obj).encode())).status == 200
    [row] = stored(state)
    assert row.unique_id == "E402-EGGS"
    assert "Username is missing" in row.warnings


@pytest.mark.parametrize(
    "auth",
    [
        "",
        basic("demo", "wrong"),
        basic("someone", "s3cret"),
        "Basic !!!not-base64",
        "Bearer s3cret",
        "Basic " + base64.b64encode(b"demos3cret").decode(),
    ],
)
async def test_refused_credentials_get_401_and_nothing_is_stored(
    receiver: Receiver, state: Path, auth: str
) -> None:
    answer = await post(receiver, SAMPLE, auth=auth)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="ot-hook", charset="UTF-8"'
    assert "wrong" not in answer.text and "s3cret" not in answer.text
    assert stored(state) == []


@pytest.mark.parametrize("order", ["good first", "good last"])
async def test_two_authorization_headers_are_refused_in_either_order(
    receiver: Receiver, state: Path, order: str
) -> None:
    """Which one a server reads is a guess: a proxy may add one, or read the other."""
    pair = [basic(), basic("demo", "wrong")]
    headers = CIMultiDict(("Authorization", value)
                          for value in (pair if order == "good first" else pair[::-1]))
    async with aiohttp.ClientSession() as session, session.post(
            f"https://127.0.0.1:{receiver.port}/", data=SAMPLE, headers=headers,
            ssl=trusting(receiver.ca_path)) as answer:
        assert answer.status == 401
    assert stored(state) == []


@pytest.mark.parametrize(
    ("user", "password"),
    [("demo", "pa:ss:word"), ("jürgen", "pässwörd✓"), ("demo", "")],
)
async def test_credentials_work_as_a_user_expects(state: Path, user: str, password: str) -> None:
    async with running(state, user=user, password=password) as receiver:
        good = await post(receiver, SAMPLE, auth=basic(user, password))
        bad = await post(receiver, SAMPLE, auth=basic(user, password + "x"))
    assert (good.status, bad.status) == (200, 401)


async def test_other_paths_and_methods_are_refused_and_not_stored(state: Path) -> None:
    async with running(state, path="/ordertime") as receiver:
        assert (await post(receiver, SAMPLE, path="/elsewhere")).status == 404
        got = await post(receiver, b"", method="GET")
        assert got.status == 405
        assert got.headers["Allow"] == "POST"
        assert (await post(receiver, SAMPLE)).status == 200
    assert len(stored(state)) == 1


async def test_status_code_and_delay_change_the_answer_but_still_store(state: Path) -> None:
    import time

    async with running(state, status_code=503, delay=0.3) as receiver:
        started = time.monotonic()
        answer = await post(receiver, SAMPLE)
        elapsed = time.monotonic() - started
    assert answer.status == 503
    assert elapsed >= 0.3
    [row] = stored(state)
    assert (row.outcome, row.http_status) == ("accepted", 503)


async def test_a_store_that_cannot_be_written_gets_503_never_200(state: Path) -> None:
    # A tiny page budget stands in for a full disk: the schema fits, deliveries soon do not.
    async with running(state, max_store_pages=16) as receiver:
        statuses = [
            (await post(receiver, sample(n, Description="x" * 3000))).status for n in range(20)
        ]
    assert 503 in statuses
    assert set(statuses) <= {200, 503}
    accepted = [r for r in stored(state) if r.outcome == "accepted"]
    assert len(accepted) == statuses.count(200)


async def test_ipv6_loopback_works_and_the_url_is_bracketed(state: Path) -> None:
    async with running(state, host="::1") as receiver:
        assert receiver.url.startswith("https://[::1]:")
        assert (await post(receiver, SAMPLE)).status == 200
    assert stored(state)[0].remote == "::1"


async def test_the_users_own_codes_reach_the_writer(state: Path, tmp_path: Path) -> None:
    """OT_HOOK_CODES is loaded by the CLI into this process; the writer process that
    validates deliveries must know the same codes, or it would warn of "unknown" ones."""
    path = tmp_path / "codes.toml"
    path.write_text('[actions]\n42 = "Approve Twice"\n')
    codes.use(decode.load_tables(path))
    try:
        async with running(state) as receiver:
            json_type = {"Content-Type": "application/json"}
            assert (await post(receiver, sample(1, ActionType=42), headers=json_type)).status \
                == 200
            assert (await post(receiver, sample(2, ActionType=43), headers=json_type)).status \
                == 200
    finally:
        codes.use(codes.BUILTIN)
    known, unknown = stored(state)
    assert known.warnings == []
    assert unknown.warnings == ["unknown ActionType 43"]
