"""`ot-hook decode`: the library directly, the command in-process, and a few real processes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ot_hook import decode as lib
from ot_hook.cli import main
from ot_hook.codes import BUILTIN, Code, Source

SAMPLE = (
    '{"Id": 1947, "ActionType": 4, "RecordType": 7, "UniqueId": 890, '
    '"Description": "Status Changed to Approved", "Username": "Jimmy Hendrix", '
    '"ActionDate": "2020-12-08T22:13:42.8181534Z"}'
)
# As Order Time's webhook help page shows it: unquoted keys, no comma after ActionType: 4.
HELP_PAGE_SAMPLE = """{
    Id: 1947,
    ActionType: 4
    RecordType: 7,
    UniqueId: 890,
    Description: "Status Changed to Approved",
    Username: "Jimmy Hendrix",
    ActionDate: "2020-12-08T22:13:42.8181534Z"
}
"""
NAMES = {"ActionTypeName": "Change Status", "RecordTypeName": "Sales Order"}


def event(**fields: Any) -> str:
    return json.dumps({**json.loads(SAMPLE), **fields})


# Lookups by name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("ship doc line item", "record", [("record", 1070)]),
        ("Ship-Doc_Line-Item", None, [("record", 1070)]),
        ("change status", None, [("action", 4)]),
        ("item", "record", [("record", 100)]),
        ("UOM", None, [("record", 160)]),
    ],
)
def test_names_to_codes(name: str, kind: Any, expected: list[tuple[str, int]]) -> None:
    assert [(e.kind, e.code) for e in lib.lookup_name(BUILTIN, name, kind)] == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("sales ordr", "did you mean Sales Order (record 7)?"),
        ("ship doc line", "did you mean Ship Doc Line Item (record 1070)?"),
        ("sales", "ambiguous: it could be Sales Order (record 7), Sales Tax Code (record 320)"),
        ("o", "and 33 more"),  # eight choices shown, then a count
        ("xyzzy", "no RecordType is called 'xyzzy' (see 'ot-hook decode --list')"),
    ],
)
def test_a_near_miss_offers_choices_and_never_guesses(name: str, message: str) -> None:
    with pytest.raises(lib.LookupFailed) as caught:
        lib.lookup_name(BUILTIN, name, "record")
    assert message in str(caught.value)


def test_a_name_in_both_tables_answers_both_and_twice_in_one_is_ambiguous() -> None:
    tables = BUILTIN.with_entries([Code("action", 5, "Payment", Source.USER)])
    assert [(e.kind, e.code) for e in lib.lookup_name(tables, "payment")] == [
        ("action", 5), ("record", 660)]
    tables = BUILTIN.with_entries([Code("record", 9000, "payment", Source.USER)])
    with pytest.raises(lib.LookupFailed, match=r"ambiguous: .*Payment \(record 660\), payment"):
        lib.lookup_name(tables, "Payment", "record")


# The user's codes file -----------------------------------------------------------------------


def test_user_codes_add_and_override(tmp_path: Path) -> None:
    path = tmp_path / "codes.toml"
    path.write_text('[actions]\n5 = "Login"\n\n[records]\n"7" = " My Orders "\n')
    tables = lib.load_tables(path)
    assert tables.get("action", 5) == Code("action", 5, "Login", Source.USER)
    assert tables.get("record", 7) == Code("record", 7, "My Orders", Source.USER)
    assert tables.get("record", 1070) == BUILTIN.get("record", 1070)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[actions\n", "is not valid TOML"),
        ("[logins]\n5 = 'x'\n", "unexpected 'logins'; use tables [actions] and [records]"),
        ("actions = 5\n", "unexpected 'actions'"),
        ("[actions]\nfive = 'Login'\n", "key 'five' is not a code"),
        ('[actions]\n"99999999999" = "Big"\n', "not a code (a whole number of at most 9 digits)"),
        ('[actions]\n"٤" = "Four"\n', "key '٤' is not a code"),
        ("[actions]\n5 = 3\n", "[actions] 5 must be a name on one line"),
        ('[actions]\n5 = "Log\\nin"\n', "must be a name on one line"),
    ],
)
def test_a_bad_codes_file_is_bad_input(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "codes.toml"
    path.write_text(text)
    with pytest.raises(lib.BadInput) as caught:
        lib.load_tables(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# Streams -------------------------------------------------------------------------------------


def decoded(text: str, tables: Any = BUILTIN) -> tuple[list[dict[str, Any]], list[str]]:
    warnings: list[str] = []
    decoder = lib.Decoder(tables, warnings.append)
    lines = [decoder.json_line(e) for e in decoder.events(io.StringIO(text), "<test>")]
    return [json.loads(line) for line in lines], warnings


def test_json_lines_get_names_and_keep_their_own_text() -> None:
    decoder = lib.Decoder(BUILTIN, pytest.fail)
    [out] = [decoder.json_line(e) for e in decoder.events([SAMPLE + "\n"], "<test>")]
    names = '"ActionTypeName": "Change Status", "RecordTypeName": "Sales Order"'
    assert out == f"{SAMPLE[:-1]}, {names}}}"


def test_pretty_printed_arrays_and_runs_of_objects_are_read() -> None:
    pretty = json.dumps(json.loads(SAMPLE), indent=2)
    text = f"[{SAMPLE},\n {event(Id=2)}]\n\n{pretty}\n{SAMPLE} {event(Id=3)}\n"
    objects, warnings = decoded(text)
    assert [o["Id"] for o in objects] == [1947, 2, 1947, 1947, 3]
    assert all(o["RecordTypeName"] == "Sales Order" for o in objects)
    assert warnings == []


def test_fields_are_untouched_and_old_names_replaced() -> None:
    text = event(UniqueId="E402-EGGS", Extra={"a": [1.5, None]}, ActionTypeName="stale")
    [obj], _ = decoded(text)
    assert obj == {**json.loads(text), **NAMES}
    assert list(obj)[:3] == ["Id", "ActionType", "RecordType"]


def test_unknown_codes_in_a_stream_are_null_with_one_warning_each() -> None:
    text = "\n".join([event(RecordType=9999), event(RecordType=9999), event(ActionType=8)])
    text += '\n{"Id": 5, "ActionType": "4"}\n'
    objects, warnings = decoded(text)
    assert [o["RecordTypeName"] for o in objects] == [None, None, "Sales Order", None]
    assert [o["ActionTypeName"] for o in objects] == ["Change Status"] * 2 + [None, None]
    again = "its name is null (not said again for later lines)"
    assert warnings == [
        f"<test> line 1: unknown RecordType 9999; {again}",
        f"<test> line 3: unknown ActionType 8; {again}",
        f"<test> line 4: ActionType is not an integer; {again}",
        f"<test> line 4: RecordType is missing; {again}",
    ]


def test_user_codes_decode_a_stream(tmp_path: Path) -> None:
    tables = BUILTIN.with_entries([Code("action", 5, "Login", Source.USER)])
    [obj], warnings = decoded(event(ActionType=5), tables)
    assert obj["ActionTypeName"] == "Login" and warnings == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"{SAMPLE}\n" + '{"Id": 1 "ActionType": 4}\n',
         "invalid JSON in <test> at line 2 column 10: Expecting ',' delimiter"),
        (f"{SAMPLE}\n\n" + '{\n  "Id": 1,\n  "ActionType": 4,\n  x\n}\n',
         "invalid JSON in <test> at line 6 column 3: Expecting property name"),
        (f"{SAMPLE}\n" + '{"Id": 1,\n', "the input ends inside the value begun on line 2"),
        ('{"Id": NaN}', "from line 1: NaN is not a JSON number"),
        ("[" * 100_000, "nested too deeply"),
        ("[1]", "<test> item 1 of the array on line 1: expected an Audit Trail object, got a"),
        ("[{}, 2]", "<test> item 2 of the array on line 1: expected an Audit Trail object"),
        ('"text"\n', "got a string"),
    ],
)
def test_malformed_input_names_line_and_column(text: str, message: str) -> None:
    with pytest.raises(lib.BadInput) as caught:
        decoded(text)
    assert message in str(caught.value)


def test_the_help_page_sample_gets_told_how_to_fix_it() -> None:
    with pytest.raises(lib.BadInput) as caught:
        decoded(HELP_PAGE_SAMPLE)
    message = str(caught.value)
    assert message.startswith("invalid JSON in <test> at line 2 column 5: keys must be in double")
    assert "Order Time's help page" in message and "comma" in message and "\n" not in message


def test_a_long_broken_value_fails_before_the_end_of_the_stream() -> None:
    consumed = 0

    def lines() -> Iterator[str]:
        nonlocal consumed
        yield '{"Id": 1, "ActionType": x,\n'  # broken, and its brackets never close
        for _ in range(1_000_000):
            consumed += 1
            yield '"a": "b",\n'

    decoder = lib.Decoder(BUILTIN, pytest.fail)
    with pytest.raises(lib.BadInput, match="at line 1 column 25: Expecting value"):
        list(decoder.events(lines(), "<test>"))
    assert consumed < 20_000


def test_a_stream_is_consumed_lazily() -> None:
    def endless() -> Iterator[str]:
        n = 0
        while True:
            n += 1
            yield event(Id=n) + "\n"

    decoder = lib.Decoder(BUILTIN, pytest.fail)
    events = decoder.events(endless(), "<test>")
    assert [next(events).obj["Id"] for _ in range(3)] == [1, 2, 3]


# The command, in-process ---------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["decode", *args])
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_two_codes_are_an_action_then_a_record(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "4", "7")
    assert (code, err) == (0, "")
    assert jsonl(out) == [
        {"kind": "action", "code": 4, "name": "Change Status", "source": "documented"},
        {"kind": "record", "code": 7, "name": "Sales Order", "source": "documented"},
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["1"], [("action", 1, "unconfirmed"), ("record", 1, "documented")]),
        (["100"], [("record", 100, "older")]),
        (["--record", "ship doc line item"], [("record", 1070, "documented")]),
        (["--action", "4", "--record", "7"], [("action", 4, "documented"),
                                              ("record", 7, "documented")]),
        (["Change-Status", "sales order"], [("action", 4, "documented"),
                                            ("record", 7, "documented")]),
    ],
)
def test_lookups(capsys: pytest.CaptureFixture[str], args: list[str],
                 expected: list[tuple[str, int, str]]) -> None:
    code, out, err = run(capsys, *args)
    assert (code, err) == (0, "")
    assert [(o["kind"], o["code"], o["source"]) for o in jsonl(out)] == expected


def test_an_unknown_lone_code_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "4", "9999")
    assert code == 1
    assert jsonl(out) == [{"kind": "action", "code": 4, "name": "Change Status",
                           "source": "documented"}]
    assert err.startswith("ot-hook: error: unknown RecordType 9999") and err.count("\n") == 1


def test_an_unknown_name_says_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--action", "chnage status")
    assert (code, out) == (1, "")
    assert err == ("ot-hook: error: no ActionType is called 'chnage status'; "
                   "did you mean Change Status (action 4)?\n")


@pytest.mark.parametrize("args", [["--list"], ["--list", "records"], ["--list", "actions"]])
def test_list(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run(capsys, *args)
    assert (code, err) == (0, "")
    kinds = {o["kind"] for o in jsonl(out)}
    assert len(jsonl(out)) == {1: 76, 2: 72 if "records" in args else 4}[len(args)]
    assert kinds == ({"action", "record"} if len(args) == 1 else {args[1][:-1]})


def test_user_codes_from_the_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "codes.toml"
    path.write_text('[actions]\n5 = "Login"\n')
    monkeypatch.setenv("OT_HOOK_CODES", str(path))
    code, out, err = run(capsys, "--action", "login")
    assert (code, err) == (0, "")
    assert jsonl(out) == [{"kind": "action", "code": 5, "name": "Login", "source": "user"}]
    path.write_text("[actions\n")
    code, out, err = run(capsys, "5")
    assert (code, out) == (7, "")
    assert err.startswith("ot-hook: error: OT_HOOK_CODES: codes file") and err.count("\n") == 1
    path.unlink()  # a setting that names no file is a bad setting, as --codes would be
    code, out, err = run(capsys, "5")
    assert (code, out) == (2, "")
    assert err == f"ot-hook: error: OT_HOOK_CODES: file {str(path)!r} does not exist\n"


def test_events_from_an_argument(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, SAMPLE)
    assert (code, err) == (0, "")
    assert jsonl(out) == [{**json.loads(SAMPLE), **NAMES}]


def test_events_from_stdin_and_files(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(f"{event(Id=2)}\n{event(Id=3, RecordType=1234)}\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(event(Id=1) + "\n"))
    code, out, err = run(capsys, "-", "--file", str(path))
    assert code == 0
    assert [o["Id"] for o in jsonl(out)] == [1, 2, 3]
    assert jsonl(out)[2]["RecordTypeName"] is None
    assert err == (f"ot-hook: warning: {path} line 2: unknown RecordType 1234; "
                   "its name is null (not said again for later lines)\n")


def test_malformed_json_exits_7_after_the_good_events(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{SAMPLE}\n{{oops\n"))
    code, out, err = run(capsys, "-")
    assert code == 7
    assert jsonl(out) == [{**json.loads(SAMPLE), **NAMES}]
    assert err == ("ot-hook: error: invalid JSON in <stdin> at line 2 column 2: "
                   "Expecting property name enclosed in double quotes\n")


def test_the_help_page_sample_as_an_argument(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, HELP_PAGE_SAMPLE)
    assert (code, out) == (7, "")
    assert "<argument> at line 2 column 5: keys must be in double quotes" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [[], ["1", "2", "3"], ["4", SAMPLE], ["--list", "things"], ["--list", "--action", "4"],
     ["-", "-"], ["--file", "/no/such/file"], ["--list", "--file", "/dev/null"],
     ["--codes", "/no/such/file", "4"], ["--bogus"]],
)
def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str],
                                           args: list[str]) -> None:
    code, out, err = run(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith("ot-hook: error: ") and err.count("\n") == 1


def test_a_terminal_gets_tables_and_data_is_never_markup(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert main(["decode", "4", "1070"]) == 0
    assert "Change Status" in screen.getvalue() and "Ship Doc Line Item" in screen.getvalue()
    assert "\x1b[" in screen.getvalue()  # bold headers: this is the pretty path

    screen.seek(0)
    screen.truncate()
    assert main(["decode", event(Description="[bold red]x[/] \x1b]0;owned\x07")]) == 0
    shown = screen.getvalue()
    assert "[bold red]x[/] \\x1b]0;owned\\x07" in shown
    assert "Sales Order" in shown and "2020-12-08 22:13" in shown
    assert capsys.readouterr().err == ""


def test_no_color_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["decode", "--list", "actions"]) == 0
    assert "unconfirmed" in screen.getvalue()
    assert "\x1b[33m" not in screen.getvalue()  # no yellow, though bold may stay


def test_json_flag_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", screen)
    text = json.dumps({**json.loads(SAMPLE), "Description": "\u202etxt.exe"},
                      ensure_ascii=False)
    assert "\u202e" in text
    assert main(["decode", "--json", text]) == 0
    [line] = screen.getvalue().splitlines()
    assert "\x1b" not in line and "\u202e" not in line  # escaped: nothing acts on the screen
    assert json.loads(line)["Description"] == "\u202etxt.exe"


# Real processes ------------------------------------------------------------------------------


def ot_hook(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "ot_hook", *args], input=stdin,
                          capture_output=True, timeout=30, env={**os.environ, **(env or {})})


def test_decode_and_help_do_not_import_aiohttp_or_trustme() -> None:
    script = (
        "import sys\n"
        "from ot_hook.cli import main\n"
        "assert main(['decode', '4', '7']) == 0\n"
        "assert main(['decode', '--help']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'trustme'))\n"
        "print(heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "[]\n"
    assert "Examples:" in result.stdout and "ot-hook decode 4 7" in result.stdout


def test_piped_stdin_with_bom_and_bad_utf8() -> None:
    result = ot_hook("decode", "-", stdin=b"\xef\xbb\xbf" + SAMPLE.encode() + b"\n")
    assert (result.returncode, result.stderr) == (0, b"")
    assert json.loads(result.stdout) == {**json.loads(SAMPLE), **NAMES}
    assert b"\x1b" not in result.stdout

    result = ot_hook("decode", "-", stdin=SAMPLE.encode() + b"\n\xff\xfe\n")
    assert result.returncode == 7
    assert result.stderr == (b"ot-hook: error: <stdin>: the input is not UTF-8 text "
                             b"(line 1 or later)\n")


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text((SAMPLE + "\n") * 200_000)
    with subprocess.Popen([sys.executable, "-m", "ot_hook", "decode", "--file", str(path)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()
        err = process.stderr.read()
        assert process.wait(timeout=30) == 0
    assert json.loads(first)["RecordTypeName"] == "Sales Order"
    assert err == b""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["decode", "4", "7"], ["decode", "--list", "records"]])
def test_output_to_a_full_disk_is_one_line_and_exit_1(command: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "ot_hook", *command], stdout=full,
                              stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode() == (
        "ot-hook: error: cannot write the output: No space left on device\n")


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_an_empty_file_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str
) -> None:
    """The README's exit codes: 7 for an empty --file, as send-sample gives."""
    path = tmp_path / "empty.json"
    path.write_text(content)
    code, out, err = run(capsys, "--file", str(path))
    assert code == 7 and out == ""
    assert err == f"ot-hook: error: {path} holds no Audit Trail object\n"


def test_a_raw_control_character_is_named_without_a_dangling_at(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, '{"a": "\x1b[31m"}')
    assert code == 7
    assert err.endswith("at line 1 column 8: Invalid control character\n")


@pytest.mark.parametrize("columns", ["80", "160"])
def test_ids_in_the_table_are_never_cut_short(
    monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setenv("COLUMNS", columns)
    long_id, unique_id = 219023847562341, 2147483647
    assert main(["decode", event(Id=long_id, UniqueId=unique_id)]) == 0
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in screen.getvalue().splitlines()]
    header, *rows = lines
    assert "…" not in "".join(rows)
    # Each column's pieces, read down the lines of the one event, give the whole number.
    ids = "".join(row[: header.index("Action")].strip() for row in rows)
    uniques = "".join(row[header.index("UniqueId"): header.index("Description")].strip()
                      for row in rows)
    assert (ids, uniques) == (str(long_id), str(unique_id))
    if columns == "160":
        assert len(rows) == 2  # only the 15-digit Id folds; the 32-bit one fits


@pytest.mark.parametrize("good", [1, 300])
def test_good_lines_before_a_bad_one_are_all_written_whatever_the_batching(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, good: int
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(event(Id=n) + "\n" for n in range(1, good + 1)) + "junk\n")
    code, out, err = run(capsys, "--file", str(path))
    assert code == 7 and f"line {good + 1}" in err
    assert [json.loads(line)["Id"] for line in out.splitlines()] == list(range(1, good + 1))


def test_a_code_is_written_in_ascii_digits(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "\u0664")  # ARABIC-INDIC DIGIT FOUR: a name, not code 4
    assert code == 1 and out == "" and "no ActionType or RecordType is called" in err
