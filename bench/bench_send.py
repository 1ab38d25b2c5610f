"""How fast `ot-hook send-sample` delivers, as a ratio to wrk against the same server.

A bare aiohttp HTTPS server (it reads the body and answers 200, nothing else) runs in a
subprocess on loopback. wrk POSTs the same event to it for a while, then
`ot-hook send-sample --count 20000 --concurrency 64` does; the figure is send-sample's
deliveries per second over wrk's requests per second. The goal is at least 0.5.

    .venv/bin/python bench/bench_send.py [--count N] [--concurrency C] [--rounds R]

wrk comes from the Debian package (apt-get install -y wrk). Not run by the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ot_hook import samples
from ot_hook.sender import basic_authorization

EVENT = samples.body(samples.default_event(1947, samples.ID_EPOCH))
AUTHORIZATION = basic_authorization("bench", "bench")


# The bare server: bench/bare_server.py, the same baseline as the receiver benchmark --------


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(directory / "server.pem"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("bare_server.py")),
         str(directory / "server.pem"), str(port), "uvloop"],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    if server.stdout.readline().strip() != b"ready":
        server.kill()
        raise SystemExit(f"the bare server did not start ({server.wait()})")
    return server, port


# The two clients -----------------------------------------------------------------------------


def lua_script(directory: Path) -> Path:
    """wrk's request: the same POST, body and headers as send-sample's."""
    path = directory / "post.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(EVENT.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json; charset=utf-8"\n'
        f'wrk.headers["Authorization"] = "{AUTHORIZATION}"\n'
    )
    return path


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> float:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get update && apt-get install -y wrk")
    result = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if match is None or "Non-2xx" in result.stdout or "errors:" in result.stdout:
        raise SystemExit(f"wrk did not report a clean run:\n{result.stdout}")
    return float(match.group(1))


def run_send_sample(url: str, ca: Path, count: int, concurrency: int) -> float:
    command = [sys.executable, "-m", "ot_hook", "send-sample", url, "--cacert", str(ca),
               "--user", "bench", "--count", str(count), "--concurrency", str(concurrency),
               "--json"]
    env = {**os.environ, "OT_HOOK_PASSWORD": "bench"}
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, timeout=600)
    match = re.search(r"sent (\d+) in [\d.]+ s \(([\d.]+)/s\): 200 x(\d+)\n", result.stderr)
    if result.returncode != 0 or match is None or match.group(3) != str(count):
        raise SystemExit(f"send-sample failed ({result.returncode}):\n{result.stderr}")
    return float(match.group(2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--wrk-seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    ratios = []
    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, wrk with 1 thread and "
          f"{args.concurrency} connections, send-sample --count {args.count} "
          f"--concurrency {args.concurrency}")
    with tempfile.TemporaryDirectory(prefix="bench-send-") as tmp:
        directory = Path(tmp)
        server, port = start_server(directory)
        url = f"https://127.0.0.1:{port}/"
        try:
            # Rounds alternate the two clients, so that a busy moment on the machine does not
            # fall on one of them only.
            for number in range(1, args.rounds + 1):
                wrk_rate = run_wrk(url, lua_script(directory), args.concurrency,
                                   args.wrk_seconds)
                send_rate = run_send_sample(url, directory / "ca.pem", args.count,
                                            args.concurrency)
                ratios.append(send_rate / wrk_rate)
                print(f"round {number}: wrk {wrk_rate:8.0f} requests/s, send-sample "
                      f"{send_rate:8.0f} deliveries/s, ratio {ratios[-1]:.2f}", flush=True)
        finally:
            server.kill()
            server.wait(10)
    print(f"ratio: {sum(ratios) / len(ratios):.2f} on average (goal: at least 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
