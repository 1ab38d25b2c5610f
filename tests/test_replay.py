"""ot-hook replay: stored deliveries sent again, byte for byte, to a real local app."""

from __future__ import annotations

import http.server
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ot_hook.cli import main
from ot_hook.serve import ForwardOptions
from tests.support import (
    PASSWORD,
    USER,
    basic,
    http_app,
    post_sync,
    recording_app,
    running_in_thread,
    sample,
    stored,
)


def relay_states(state: Path) -> list[str]:
    conn = sqlite3.connect(state / "events.db")
    try:
        return [row[0] for row in conn.execute("SELECT state FROM relays ORDER BY row")]
    finally:
        conn.close()


def replay(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> tuple[int, str, str]:
    code = main(["replay", "--home", str(state), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def filled(state: Path) -> Path:
    """A store with three accepted deliveries (two for sales order 890) and a rejected one."""
    with running_in_thread(state) as receiver:
        post_sync(receiver, sample(1, UniqueId=890), {"Content-Type": "text/plain"})
        post_sync(receiver, sample(2, UniqueId=891))
        post_sync(receiver, sample(3, UniqueId=890))
        post_sync(receiver, b"{broken")
    return state


def test_a_selection_goes_out_byte_for_byte(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    with recording_app() as (url, received):
        code, out, err = replay(capsys, filled, "--unique-id", "890", "--to", f"{url}/hook")
    assert code == 0, err
    rows = stored(filled)
    assert [r.body for r in received] == [rows[0].body, rows[2].body]
    assert received[0].path == "/hook"
    assert received[0].headers["Content-Type"] == "text/plain"
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in results] == [200, 200]
    assert [r["id"] for r in results] == [1, 3]


def test_the_targets_answers_are_reported_and_failures_exit_non_zero(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    with recording_app([500]) as (url, received):
        code, out, err = replay(capsys, filled, "--row", "1", "--row", "2", "--to", url)
    assert code == 6, err
    assert [json.loads(line)["status"] for line in out.splitlines()] == [500, 200]
    assert len(received) == 2


@contextmanager
def answering(status: int, body: bytes) -> Iterator[str]:
    """A plain-HTTP app on a free loopback port that answers every POST with `body`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_app(Handler) as url:
        yield url


def test_a_targets_escapes_are_shown_not_obeyed(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    with answering(500, b"\x1b]0;pwned\x07\x1b[2J\x1b[31mEVIL") as url:
        code, out, err = replay(capsys, filled, "--row", "1", "--to", url)
    assert code == 6, err
    assert "HTTP error x1: \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mEVIL" in err.splitlines()
    assert "\x1b" not in err + out and "\x07" not in err + out


def test_default_target_is_the_running_receivers_forward_to(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    with recording_app([503] * 20) as (url, received):  # the relay keeps failing
        forward = ForwardOptions(url + "/hook", retries=0)
        with running_in_thread(state, forward=forward) as receiver:
            post_sync(receiver, sample(5))
            code, _, err = replay(capsys, state, "--id", "5", "--dry-run")
            assert code == 0 and f"to {url}/hook" in err
            code, out, _ = replay(capsys, state, "--id", "5")
    assert json.loads(out.splitlines()[-1])["status"] == 503
    assert code == 6  # the app still answers 503
    assert all(r.path == "/hook" and r.body == sample(5) for r in received)
    assert "Authorization" not in received[-1].headers  # an app of the user's: none unless asked


def test_replay_to_the_receiver_itself_uses_its_credentials(
    capsys: pytest.CaptureFixture[str], filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OT_HOOK_USER", USER)
    monkeypatch.setenv("OT_HOOK_PASSWORD", PASSWORD)
    with running_in_thread(filled):
        code, out, err = replay(capsys, filled, "--id", "2", "--json")
    assert code == 0, err
    assert "Duplicate of row 2" in json.loads(out)["message"]
    assert stored(filled)[-1].outcome == "duplicate"


def test_dry_run_lists_and_sends_nothing(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    with recording_app() as (url, received):
        code, out, err = replay(capsys, filled, "--status", "rejected", "--dry-run", "--to", url)
    assert code == 0
    assert received == []
    assert [json.loads(line)["row"] for line in out.splitlines()] == [4]
    assert f"would send 1 delivery to {url}" in err


def test_without_a_selection_it_asks_for_one(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    code, out, err = replay(capsys, filled, "--to", "http://127.0.0.1:9/")
    assert code == 2
    assert out == ""
    assert "say what to replay" in err


def test_nothing_matching_sends_nothing(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    code, out, err = replay(capsys, filled, "--id", "424242", "--to", "http://127.0.0.1:9/")
    assert (code, out) == (0, "")
    assert "nothing matches" in err


def test_explicit_credentials_are_sent(capsys: pytest.CaptureFixture[str], filled: Path) -> None:
    with recording_app() as (url, received):
        code, _, err = replay(capsys, filled, "--row", "2", "--to", url, "--user", "app",
                              "--password", "pw")
    assert code == 0, err
    assert received[0].headers["Authorization"] == basic("app", "pw")


def test_credentials_never_go_in_the_clear_to_another_machine_unasked(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    # Refused before any connection is tried: nothing leaves this machine.
    code, out, err = replay(capsys, filled, "--row", "2", "--to", "http://192.0.2.1:3000/hook",
                            "--user", "app", "--password", "pw")
    assert (code, out) == (2, "")
    assert "in the clear to 192.0.2.1" in err and "--allow-http" in err and "pw" not in err


def test_relay_failed_selects_what_the_app_missed(
    capsys: pytest.CaptureFixture[str], state: Path
) -> None:
    with recording_app([404, 200]) as (url, received):
        with running_in_thread(state, forward=ForwardOptions(url, retries=0)) as receiver:
            post_sync(receiver, sample(1))  # the app answers 404: failed, never retried
            post_sync(receiver, sample(2))  # 200: delivered
            for _ in range(250):
                if len(received) == 2:
                    break
                time.sleep(0.02)
        # serve has stopped: the relays' own --forward-to target is where they go.
        code, out, err = replay(capsys, state, "--relay", "failed", "--dry-run")
        assert code == 0, err
        assert [json.loads(line)["event"]["Id"] for line in out.splitlines()] == [1]
        assert f"to {url}: the --forward-to target of these relays" in err
        # The app is fixed (it answers 200 now): replay what it missed, and only once.
        code, _, err = replay(capsys, state, "--relay", "failed", "--to", url)
        assert code == 0 and "marked 1 relays" in err
        assert received[-1].body == sample(1)
        code, out, err = replay(capsys, state, "--relay", "failed", "--dry-run", "--to", url)
        assert (code, out) == (0, "") and "would send 0" in err
        code, out, err = replay(capsys, state, "--relay", "failed")  # serve stopped
        assert (code, out) == (0, "") and "nothing matches" in err
    code, _, err = replay(capsys, state, "--relay", "lost", "--to", url)
    assert code == 2 and "choose pending, delivered or failed" in err
    code, _, err = replay(capsys, state, "--relay", "pending", "--to", "")
    assert code == 2 and "--to is empty" in err


def test_relay_without_any_relays_asks_where(capsys: pytest.CaptureFixture[str],
                                             filled: Path) -> None:
    code, out, err = replay(capsys, filled, "--relay", "failed")
    assert (code, out) == (2, "") and "holds no relays" in err and "--to URL" in err


@pytest.mark.parametrize("command", [["replay", "--all", "--to"], ["send-sample"]])
def test_an_empty_url_is_refused_not_the_default(
    capsys: pytest.CaptureFixture[str], filled: Path, command: list[str]
) -> None:
    # An unset variable ("--to $APP_URL") once resent the whole store to the receiver.
    with running_in_thread(filled):
        before = len(stored(filled))
        code = main([*command, "", "--home", str(filled)])
        assert len(stored(filled)) == before
    err = capsys.readouterr().err
    assert code == 2 and "empty" in err and err.count("\n") == 1


def test_relays_for_two_targets_ask_which(capsys: pytest.CaptureFixture[str],
                                          state: Path) -> None:
    with recording_app([404]) as (first, _), recording_app([404]) as (second, _):
        for url, event_id in ((first, 1), (second, 2)):
            with running_in_thread(state, forward=ForwardOptions(url, retries=0)) as receiver:
                post_sync(receiver, sample(event_id))
                for _ in range(250):
                    if relay_states(state).count("failed") == event_id:
                        break
                    time.sleep(0.02)
    code, out, err = replay(capsys, state, "--relay", "failed", "--dry-run")
    assert (code, out) == (2, "")
    assert "more than one --forward-to target" in err and first in err and second in err
    code, out, err = replay(capsys, state, "--relay", "pending", "--dry-run")
    assert (code, out) == (0, "") and "nothing matches: no relay is pending" in err


def test_the_receivers_credentials_from_the_environment_never_go_to_the_app(
    capsys: pytest.CaptureFixture[str], state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README exports OT_HOOK_USER and OT_HOOK_PASSWORD for the receiver; however the app's
    # URL is spelled, and whether serve runs or not, they are not the app's to have.
    with recording_app() as (url, received):
        forward = ForwardOptions(url, user="app", password="app-pw")
        with running_in_thread(state, forward=forward) as receiver:
            post_sync(receiver, sample(1))
            for _ in range(250):
                if received:
                    break
                time.sleep(0.02)
            monkeypatch.setenv("OT_HOOK_USER", USER)
            monkeypatch.setenv("OT_HOOK_PASSWORD", PASSWORD)
            code, _, err = replay(capsys, state, "--row", "1")  # to the --forward-to app
            assert code == 0 and "are the receiver's: not sent to" in err
            spelled = url.replace("http://127.0.0.1", "HTTP://localhost")
            code, _, err = replay(capsys, state, "--row", "1", "--to", spelled)
            assert code == 0, err
        code, _, err = replay(capsys, state, "--relay", "delivered")  # serve stopped
        assert code == 0, err
        code, _, err = replay(capsys, state, "--row", "1", "--to", url, "--user", "app",
                              "--password", "app-pw")  # flags: the app's own
        assert code == 0, err
    assert len(received) == 5
    assert ["Authorization" in r.headers for r in received[1:4]] == [False, False, False]
    assert received[4].headers["Authorization"] == basic("app", "app-pw")
    assert received[4].headers["User-Agent"].endswith(" replay")


def test_a_filter_leaves_rejected_deliveries_out_unless_status_names_them(
    capsys: pytest.CaptureFixture[str], filled: Path
) -> None:
    # serve --forward-to never relays a rejected delivery; "replay --since 1h" does not either.
    code, out, err = replay(capsys, filled, "--since", "1h", "--dry-run", "--to", "http://x/")
    assert code == 0 and [json.loads(line)["row"] for line in out.splitlines()] == [1, 2, 3]
    assert "left out 1 rejected (--status rejected sends them)" in err
    code, out, _ = replay(capsys, filled, "--since", "1h", "--status", "rejected",
                          "--dry-run", "--to", "http://x/")
    assert [json.loads(line)["row"] for line in out.splitlines()] == [4]
    code, out, _ = replay(capsys, filled, "--row", "4", "--dry-run", "--to", "http://x/")
    assert [json.loads(line)["row"] for line in out.splitlines()] == [4]  # named: sent
