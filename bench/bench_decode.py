"""How fast `ot-hook decode` is, next to the simplest programs that do the same job.

Run by hand, not by the tests:  .venv/bin/python bench/bench_decode.py [--lines N] [--runs N]

1. Start-up: the median wall time of `ot-hook decode 4 7` against a bare Typer app that prints
   one line, measured in the same run, alternating (target: at most 1.3 times).
2. Streaming: `ot-hook decode -` over N JSON lines against a plain json.loads / json.dumps loop
   over the same file (target: at least half its throughput), with each one's peak RSS; memory
   is flat when the peak for N lines is about the peak for N/10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_APP = """\
import typer

app = typer.Typer()


@app.command()
def main() -> None:
    print("hello")


app()
"""
PLAIN_LOOP = """\
import json
import sys

write = sys.stdout.write
for line in sys.stdin:
    write(json.dumps(json.loads(line)) + "\\n")
"""
# A good day from the Audit Trail report (DESIGN.md section 4): action, record, number, text.
DAY = [
    (1, 3, 556, ""), (4, 3, 556, "Status Changed to Ready"), (1, 100, "E402-EGGS", ""),
    (2, 100, "E402-EGGS", ""), (4, 7, 1877, "Status Changed to Approved"), (1, 660, 1645, ""),
    (4, 6, 56, "Status Changed to Sent"), (1, 2, 756, ""), (4, 6, 56, "Status Changed to Closed"),
    (4, 2, 756, "Status Changed to Received"), (4, 3, 556, "Status Changed to Closed"),
]


def write_events(path: Path, count: int) -> None:
    with path.open("w") as file:
        for n in range(count):
            action, record, unique_id, description = DAY[n % len(DAY)]
            file.write(json.dumps({
                "Id": 1947 + n, "ActionType": action, "RecordType": record,
                "UniqueId": unique_id, "Description": description, "Username": "Jimmy Hendrix",
                "ActionDate": "2022-01-03T10:17:42.8181534Z",
            }) + "\n")


# As a user runs it: with bytecode cached (some sandboxes set PYTHONDONTWRITEBYTECODE, which
# makes every start compile ot_hook from source, while Typer's own bytecode is installed).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(command: list[str], stdin: Path | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one run, its output thrown away."""
    with open(stdin or os.devnull, "rb") as source:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=source, stdout=subprocess.DEVNULL, env=ENV)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command} exited {process.returncode}")
    rss = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)  # bytes on macOS
    return elapsed, rss


def startup(work: Path, runs: int) -> None:
    bare = work / "bare.py"
    bare.write_text(BARE_APP)
    ours_cmd = [sys.executable, "-m", "ot_hook", "decode", "4", "7"]
    bare_cmd = [sys.executable, str(bare)]
    run(ours_cmd)  # warm the file cache and the bytecode for both
    run(bare_cmd)
    ours, plain = [], []
    for _ in range(runs):  # alternate, so that drift hits both alike
        ours.append(run(ours_cmd)[0])
        plain.append(run(bare_cmd)[0])
    ours_median, plain_median = statistics.median(ours), statistics.median(plain)
    print(f"start-up, median of {runs}: ot-hook decode 4 7 {ours_median * 1000:.0f} ms, "
          f"bare Typer app {plain_median * 1000:.0f} ms, "
          f"ratio {ours_median / plain_median:.2f} (target <= 1.3)")


def streaming(work: Path, lines: int) -> None:
    loop = work / "plain_loop.py"
    loop.write_text(PLAIN_LOOP)
    big, small = work / "big.jsonl", work / "small.jsonl"
    write_events(big, lines)
    write_events(small, max(lines // 10, 1))
    ours_cmd = [sys.executable, "-m", "ot_hook", "decode", "-"]
    plain_cmd = [sys.executable, str(loop)]
    ours_time, ours_rss = run(ours_cmd, big)
    plain_time, plain_rss = run(plain_cmd, big)
    _, ours_small_rss = run(ours_cmd, small)
    print(f"streaming {lines:,} lines: ot-hook decode - {ours_time:.2f} s "
          f"({lines / ours_time:,.0f} lines/s, peak RSS {ours_rss / 1024:.0f} MiB); "
          f"plain loop {plain_time:.2f} s ({lines / plain_time:,.0f} lines/s, "
          f"peak RSS {plain_rss / 1024:.0f} MiB)")
    print(f"throughput ratio {plain_time / ours_time:.2f} of the plain loop (target >= 0.5); "
          f"peak RSS {ours_small_rss / 1024:.0f} MiB for {max(lines // 10, 1):,} lines, "
          f"{ours_rss / 1024:.0f} MiB for {lines:,} (flat when about equal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        startup(Path(work), args.runs)
        streaming(Path(work), args.lines)


if __name__ == "__main__":
    main()
