"""Every benchmark in one run, written to bench/RESULTS.md (run by hand, never by the tests):

    .venv/bin/python bench/run_all.py [--quick]

Each benchmark measures ot-hook against its own baseline in the same run and reports ratios;
--quick runs each with smaller counts (for a smoke test of the harness, not for figures).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES: list[tuple[str, list[str], list[str]]] = [
    # (title, full arguments, --quick arguments)
    ("Receiver: throughput, latency and memory (issue 7)",
     ["bench_receiver.py", "--rounds", "5", "--seconds", "3", "--memory"],
     ["bench_receiver.py", "--rounds", "1", "--seconds", "1", "--connections", "32"]),
    ("decode: start-up and streaming (issue 3)",
     ["bench_decode.py"], ["bench_decode.py", "--lines", "20000", "--runs", "5"]),
    ("tail: latency, idle CPU, -n 10 on a large store (issue 5)",
     ["bench_tail.py"], ["bench_tail.py", "--events", "50", "--rows", "20000", "--idle", "2"]),
    ("send-sample: rate against wrk (issue 4)",
     ["bench_send.py", "--rounds", "3"],
     ["bench_send.py", "--count", "2000", "--wrk-seconds", "2", "--rounds", "1"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    command = "python bench/run_all.py" + (" --quick" if args.quick else "")
    sections = [
        "# Benchmark results\n",
        f"Written by `{command}` on {datetime.date.today()}: {os.cpu_count()} CPUs, "
        f"{platform.machine()}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}. Each figure is measured against its baseline in the same run.\n",
    ]
    for title, full, quick in BENCHES:
        script, *rest = quick if args.quick else full
        started = time.monotonic()
        print(f"running {script} {' '.join(rest)} ...", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, str(HERE / script), *rest],
                                capture_output=True, text=True)
        took = time.monotonic() - started
        output = result.stdout.strip() or "(no output)"
        if result.returncode != 0:
            output += f"\n\nexit {result.returncode}:\n{result.stderr.strip()[-2000:]}"
        sections.append(f"## {title}\n\n`python bench/{script} {' '.join(rest)}` "
                        f"({took:.0f} s)\n\n```\n{output}\n```\n")
    (HERE / "RESULTS.md").write_text("\n".join(sections))
    print(f"wrote {HERE / 'RESULTS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
