"""How fast `ot-hook tail` is, against the issue's targets (not run by the test suite).

1. Latency: from the receiver's 200 to the line in a piped `tail --json` (p50, p99; target
   p99 <= 100 ms), the receiver and tail each a real subprocess.
2. Idle CPU of a following tail (target < 1%).
3. `tail -n 10 --no-follow` with 1,000,000 stored rows: wall time (target < 0.3 s) and peak
   memory, next to the same on 1,000 rows and to bare `ot-hook --version` start-up.

    .venv/bin/python bench/bench_tail.py [--events 300] [--rows 1000000] [--idle 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ot_hook import home, store

USER, PASSWORD = "bench", "bench-password"


def ot_hook(*args: str) -> list[str]:
    return [sys.executable, "-m", "ot_hook", *args]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "NO_COLOR")}
    return {**env, "OT_HOOK_USER": USER, "OT_HOOK_PASSWORD": PASSWORD}


@contextlib.contextmanager
def serving(state: Path) -> Iterator[home.ServeInfo]:
    process = subprocess.Popen(ot_hook("serve", "--home", str(state), "--port", "0", "-q"),
                               env=child_env(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while (info := home.read_serve_info(state)) is None or info.pid != process.pid:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("serve did not start")
            time.sleep(0.05)
        yield info
    finally:
        process.terminate()
        process.wait(30)


class Follower:
    """A piped `ot-hook tail --json -n 0`; each line's arrival time, keyed by the event Id."""

    def __init__(self, state: Path) -> None:
        self.process = subprocess.Popen(
            ot_hook("tail", "--home", str(state), "--json", "-n", "0"), env=child_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.arrivals: queue.Queue[tuple[int, float]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.process.stderr is not None
        while "following" not in self.process.stderr.readline():
            pass

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.arrivals.put((json.loads(line)["event"]["Id"], time.perf_counter()))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def post_all(info: home.ServeInfo, count: int) -> dict[int, float]:
    """Post `count` deliveries one at a time, a little apart; when each 200 came back."""
    import ssl

    import aiohttp

    context = ssl.create_default_context(cafile=info.ca)
    auth = aiohttp.encode_basic_auth(USER, PASSWORD)
    answered: dict[int, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for event_id in range(1, count + 1):
            body = json.dumps({"Id": event_id, "ActionType": 4, "RecordType": 7,
                               "UniqueId": event_id, "Description": "Status Changed to Approved",
                               "Username": "bench", "ActionDate": "2024-01-03T10:17:00Z"})
            async with session.post(info.url, data=body,
                                    headers={"Authorization": auth}) as response:
                await response.read()
                answered[event_id] = time.perf_counter()
                assert response.status == 200, response.status
            await asyncio.sleep(random.uniform(0.005, 0.05))  # not in lock-step with polling
    return answered


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # not Linux
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_and_idle(state: Path, events: int, idle: float) -> None:
    with serving(state) as info:
        follower = Follower(state)
        try:
            answered = asyncio.run(post_all(info, events))
            arrived: dict[int, float] = {}
            deadline = time.monotonic() + 30
            while len(arrived) < events and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    event_id, at = follower.arrivals.get(timeout=1)
                    arrived[event_id] = at
            lags = sorted((arrived[i] - answered[i]) * 1000 for i in answered if i in arrived)
            p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            print(f"latency, 200 to line ({len(lags)}/{events} lines): "
                  f"p50 {statistics.median(lags):.1f} ms, p99 {p99:.1f} ms, "
                  f"max {lags[-1]:.1f} ms  (target p99 <= 100 ms: {p99 / 100:.2f} of it)")
            time.sleep(1)
            before = cpu_seconds(follower.process.pid)
            time.sleep(idle)
            after = cpu_seconds(follower.process.pid)
            if before is None or after is None:
                print("idle CPU: not measured (needs /proc)")
            else:
                share = (after - before) / idle * 100
                print(f"idle CPU of a following tail over {idle:.0f} s: {share:.2f}% "
                      f"(target < 1%)")
        finally:
            follower.stop()


def fill(path: Path, rows: int) -> None:
    """`rows` realistic deliveries, written directly (the receiver would take far longer)."""
    store.open_for_writing(path).close()  # the schema, as ot-hook makes it
    conn = store.open_for_writing(path)
    conn.execute("PRAGMA synchronous = OFF")
    start = time.time() - rows * 0.01
    headers = json.dumps([["Content-Type", "application/json"], ["User-Agent", "bench"]])

    def values() -> Iterator[tuple[object, ...]]:
        for n in range(1, rows + 1):
            event = {"Id": n, "ActionType": 1 + n % 4, "RecordType": 7, "UniqueId": n,
                     "Description": "Status Changed to Approved", "Username": "Jimmy Hendrix",
                     "ActionDate": "2024-01-03T10:17:00.1234567Z"}
            body = json.dumps(event).encode()
            received = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + n * 0.01))
            yield (received + f".{n % 1000:03d}000Z", "accepted", 200, "[]", "127.0.0.1",
                   "POST", "/", "application/json", headers, body, len(body), n,
                   event["ActionType"], 7, str(n), event["Description"], event["Username"],
                   event["ActionDate"])

    conn.execute("BEGIN")
    conn.executemany(
        """INSERT INTO deliveries (received_at, outcome, http_status, warnings, remote, method,
               target, content_type, headers, body, body_size, event_id, action_type,
               record_type, unique_id, description, username, action_date)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        values(),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def timed_run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of one command (its own rusage, via wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, env=child_env())
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, args
    kib = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # macOS counts bytes
    return elapsed, kib / 1024


def best_of(runs: int, args: list[str]) -> tuple[float, float]:
    results = [timed_run(args) for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results)


LIBRARY_ONLY = """
import sys
from pathlib import Path
from ot_hook import tail
from ot_hook.terminal import Terminal
tail.run(tail.Follow(Path(sys.argv[1]), last=10, follow=False), Terminal())
"""


def big_store(base: Path, rows: int) -> None:
    small, big = base / "small", base / "big"
    for state, count in ((small, 1000), (big, rows)):
        state.mkdir()
        began = time.perf_counter()
        fill(state / home.STORE, count)
        print(f"filled {count:,} rows in {time.perf_counter() - began:.1f} s")
    startup, startup_mem = best_of(5, ot_hook("--version"))
    print(f"ot-hook --version: {startup * 1000:.0f} ms, {startup_mem:.0f} MiB")
    for label, extra in (("", []), (" --since 10m", ["--since", "10m"]),
                         (" --action modify", ["--action", "modify"]),
                         (" --id 5", ["--id", "5"]), (" --unique-id 5", ["--unique-id", "5"]),
                         (" --grep 'no such text'", ["--grep", "no such text"])):
        for state, count in ((small, 1000), (big, rows)):
            wall, mem = best_of(5, ot_hook("tail", "--home", str(state), "-n", "10",
                                           "--no-follow", "--json", *extra))
            verdict = f" (target < 300 ms: {wall / 0.3:.2f} of it)" if count == rows else ""
            print(f"tail -n 10 --no-follow{label}, {count:>9,} rows: {wall * 1000:4.0f} ms, "
                  f"{mem:.0f} MiB{verdict}")
    library = [sys.executable, "-c", LIBRARY_ONLY, str(big / home.STORE)]
    wall, mem = best_of(5, library)
    print(f"the same through the library, without the CLI (python, imports, query): "
          f"{wall * 1000:.0f} ms, {mem:.0f} MiB")
    from ot_hook import tail

    conn = store.open_for_reading(big / home.STORE)
    began = time.perf_counter()
    tail.latest(conn, tail.Filters(), 10, tail.last_row(conn))
    print(f"  of which the query itself: {(time.perf_counter() - began) * 1000:.1f} ms")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--idle", type=float, default=10.0)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tail-") as tmp:
        base = Path(tmp)
        latency_and_idle(base / "live", options.events, options.idle)
        big_store(base, options.rows)


if __name__ == "__main__":
    main()
