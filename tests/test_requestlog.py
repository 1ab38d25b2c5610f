"""The receiver's status log never blocks, even when stderr does."""

from __future__ import annotations

import io
import threading

from ot_hook.events import parse_body
from ot_hook.receiver import RequestRecord
from ot_hook.requestlog import QUEUE_LINES, StatusLog, format_request
from tests.support import sample


class StuckStream(io.StringIO):
    """A stderr that blocks every write until released, like a paused terminal."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.release.wait(30)
        return super().write(text)


def test_a_stuck_stderr_drops_lines_and_counts_them() -> None:
    stream = StuckStream()
    log = StatusLog(stream)
    log.line("line 0")
    assert stream.writing.wait(10)  # the log's writer holds line 0, stuck in write()
    for n in range(1, QUEUE_LINES + 500):  # would hang here if line() waited for the stream
        log.line(f"line {n}")
    stream.release.set()
    log.close()
    written = stream.getvalue()
    # The writer held one line while stuck, the queue the next QUEUE_LINES; the rest dropped.
    assert "(499 log lines dropped: stderr was too slow)" in written
    assert written.count("\nline ") == QUEUE_LINES


def test_a_request_line_names_status_outcome_codes_and_row() -> None:
    event = parse_body(sample(1947)).key()
    line = format_request(RequestRecord(200, "accepted", "127.0.0.1", 184, 2.5, event, 3))
    assert " 200 accepted " in line
    assert "Id 1947 Change Status Sales Order 890" in line
    assert "row 3" in line and "184 B" in line and "2.5 ms" in line


def test_delivery_text_cannot_move_the_cursor() -> None:
    event = parse_body(sample(1, UniqueId="\x1b[2J\x1b[H890")).key()
    line = format_request(RequestRecord(200, "accepted", None, 10, 1.0, event, 1))
    assert "\x1b" not in line
    assert "\\x1b[2J" in line


def test_refused_requests_name_the_remote_address() -> None:
    line = format_request(RequestRecord(401, "unauthorized", "10.1.2.3", 0, 0.1))
    assert "401 unauthorized" in line and "from 10.1.2.3" in line
