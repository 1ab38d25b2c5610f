"""Receiver throughput, latency and memory, against a bare aiohttp HTTPS server in the same run.

Run by hand (wrk comes from Debian: apt-get install wrk):

    .venv/bin/python bench/bench_receiver.py [--seconds 10] [--memory]

For each event loop (asyncio, and uvloop where installed) and for 1, 32 and 128 keep-alive
connections, wrk POSTs the sample delivery with Basic Auth to:
  - bare: bench/bare_server.py, which reads the body and answers 200 (no auth, no store);
  - ot-hook: `ot-hook serve --quiet` with its store at synchronous=FULL (every 200 durable).
All of them run side by side and wrk goes from one to the next, --rounds runs of --seconds
each: a shared machine's speed drifts by 15% from one run to the next, and a ratio taken
within a round cancels most of that. It prints a Markdown table of the medians (deliveries
per second, p50 and p99) and the median of the per-round ratios, with their range, and the
ratio of ot-hook as shipped (on uvloop where installed) to the bare server on asyncio.
Beside each rate: the CPU time the server spent per request over the same run (ot-hook's
receiver process and its writer process apart): on two cores shared with wrk, CPU per
delivery is what sets the rate, and it varies far less from run to run than the rate does.
--memory also reports resident size (receiver and its writer process) after 1,000 and
100,000 deliveries.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
ENV = {**os.environ, "OT_HOOK_USER": "demo", "OT_HOOK_PASSWORD": "s3cret"}


@dataclass
class Result:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: str
    # CPU per request of the server (its main process, and its writer process), in us.
    cpu_us: tuple[float, float] = (0.0, 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def to_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# Each wrk run sends Ids from a new range: a server that outlives a run (warm-up, rounds)
# then stores new events, not duplicates of the last run's, which cost a lookup each.
_IDS_PER_RUN = 100_000_000
_runs = itertools.count(1)


def run_wrk(url: str, connections: int, seconds: int) -> Result:
    first_id = next(_runs) * _IDS_PER_RUN
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-s", str(HERE / "post.lua"), url, "--", str(first_id)],
        capture_output=True, text=True, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: a "+/- Stdev" column such as 71.50% must not pass for the 50th percentile.
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    problems = re.findall(r"(Socket errors:.*|Non-2xx or 3xx responses: \d+)", out)
    return Result(rate, p50, p99, "; ".join(problems))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system, all threads) of `pid` and of its child processes."""
    def of(each: int) -> float:
        fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return of(pid), sum(of(int(child)) for child in children)


def run_wrk_measured(url: str, pid: int, connections: int, seconds: int) -> Result:
    """run_wrk, with the server's CPU per request over the same run."""
    before = cpu_seconds(pid)
    result = run_wrk(url, connections, seconds)
    after = cpu_seconds(pid)
    count = result.rate * seconds
    result.cpu_us = ((after[0] - before[0]) * 1e6 / count, (after[1] - before[1]) * 1e6 / count)
    return result


def start_ot_hook(home: Path, loop: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "ot_hook", "serve", "--home", str(home), "--port", str(port), "--quiet",
         "--loop", loop],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process, port


def start_bare(cert: Path, loop: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen([PYTHON, str(HERE / "bare_server.py"), str(cert), str(port), loop],
                               stdout=subprocess.DEVNULL)
    wait_for_port(port)
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(30)


def rss_kb(pid: int) -> int:
    """Resident size of `pid` and its children (the receiver and its writer process)."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for each in [pid, *(int(c) for c in children.read_text().split())]:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def rows(home: Path) -> int:
    conn = sqlite3.connect(f"file:{home / 'events.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])
    finally:
        conn.close()


def measure_memory(work: Path, loop: str) -> tuple[int, int]:
    """RSS after 1,000 and after 100,000 stored deliveries (wrk at 32 connections)."""
    home = work / f"mem-{loop}"
    process, port = start_ot_hook(home, loop)
    load = subprocess.Popen(
        ["wrk", "-t1", "-c32", "-d600s", "-s", str(HERE / "post.lua"),
         f"https://127.0.0.1:{port}/"], stdout=subprocess.DEVNULL,
    )
    try:
        marks: dict[int, int] = {}
        for target in (1_000, 100_000):
            while rows(home) < target:
                time.sleep(0.2)
            marks[target] = rss_kb(process.pid)
        return marks[1_000], marks[100_000]
    finally:
        load.terminate()
        load.wait()
        stop(process)


def loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def compare(urls: dict[str, str], pids: dict[str, int], connections: int, seconds: int,
            rounds: int) -> dict[str, list[Result]]:
    """wrk against each server in turn, `rounds` times (after a warm-up of each)."""
    for url in urls.values():
        run_wrk(url, connections, 1)
    results: dict[str, list[Result]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            results[name].append(run_wrk_measured(url, pids[name], connections, seconds))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio(ours: list[Result], bare: list[Result]) -> str:
    """The median of the per-round ratios, and their range."""
    ratios = sorted(o.rate / b.rate for b, o in zip(bare, ours, strict=True))
    return f"{median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def row(loop: str, connections: int, bare: list[Result], ours: list[Result]) -> str:
    errors = "; ".join(sorted({r.errors for r in ours if r.errors}))
    note = f" ({errors})" if errors else ""
    loop_us = median([r.cpu_us[0] for r in ours])
    writer_us = median([r.cpu_us[1] for r in ours])
    return (f"| {loop} | {connections} | {median([r.rate for r in bare]):.0f} "
            f"| {median([r.rate for r in ours]):.0f}{note} | {ratio(ours, bare)} "
            f"| {median([r.p50_ms for r in bare]):.2f}/{median([r.p99_ms for r in bare]):.2f} "
            f"| {median([r.p50_ms for r in ours]):.2f}/{median([r.p99_ms for r in ours]):.2f} "
            f"| {median([r.cpu_us[0] for r in bare]):.0f} "
            f"| {loop_us:.0f} + {writer_us:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs against each server")
    parser.add_argument("--connections", default="1,32,128")
    parser.add_argument("--memory", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="ot-hook-bench-"))
    # One certificate for every server, made the way serve makes it.
    setup, _ = start_ot_hook(work / "cert-home", "asyncio")
    stop(setup)
    cert = work / "cert-home" / "server.pem"

    servers: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    for loop in loops():
        servers[f"bare {loop}"], port = start_bare(cert, loop)
        urls[f"bare {loop}"] = f"https://127.0.0.1:{port}/"
        servers[f"ot-hook {loop}"], port = start_ot_hook(work / f"{loop}-home", loop)
        urls[f"ot-hook {loop}"] = f"https://127.0.0.1:{port}/"
    print(f"{os.cpu_count()} CPUs, wrk -t1, the sample delivery; {args.rounds} rounds of "
          f"{args.seconds} s against each server in turn; medians, and the range of the "
          "per-round ratio\n")
    print("| loop | connections | bare req/s | ot-hook req/s | ratio (range) "
          "| bare p50/p99 ms | ot-hook p50/p99 ms | bare CPU us/req "
          "| ot-hook CPU us/req (receiver + writer) |")
    print("|---|---|---|---|---|---|---|---|---|")
    shipped: list[str] = []
    try:
        for connections in (int(c) for c in args.connections.split(",")):
            results = compare(urls, {name: server.pid for name, server in servers.items()},
                              connections, args.seconds, args.rounds)
            for loop in loops():
                print(row(loop, connections, results[f"bare {loop}"],
                          results[f"ot-hook {loop}"]), flush=True)
            default = loops()[-1]  # serve's default: uvloop where installed
            shipped.append(f"{connections} connections: "
                           f"{ratio(results[f'ot-hook {default}'], results['bare asyncio'])}")
    finally:
        for server in servers.values():
            stop(server)
    print(f"\not-hook on its default loop ({loops()[-1]}) against the bare server on the "
          f"default asyncio loop: {'; '.join(shipped)}")
    if args.memory:
        for loop in loops():
            small, large = measure_memory(work, loop)
            print(f"\nmemory ({loop}): RSS {small / 1024:.1f} MB after 1,000 deliveries, "
                  f"{large / 1024:.1f} MB after 100,000 (+{(large - small) / 1024:.1f} MB; "
                  "the receiver and its writer process together)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
