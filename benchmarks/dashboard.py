"""What the web dashboard costs the daemon: its page weight, and the daemon's CPU with a dashboard
tab open against the same daemon with none (issue 21's target: ≤ 1% of a core at idle).

A real daemon (smollm2, gemma3-270m, minilm, as the embedded defaults) idles; its CPU (utime +
stime of /proc/PID/stat, all threads) is read over `--seconds` with no page open, then with Debian's
Chromium (driven by Playwright) showing the overview and then the queue page (charts fed by the
timeline's SSE stream, one event a second), then with no page again. Rounds alternate, so drift
hits both. The page weight is what the browser fetched to show the overview (bodies, as the
server sent them), the SSE stream's bytes per second are read with httpx.

    flock /tmp/sage-heavy.lock python benchmarks/dashboard.py [--seconds 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _machine import print_header
from _serving import start_daemon

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def share_of_a_core(pid: int, seconds: float) -> float:
    """The daemon's CPU over `seconds` of wall time, as a percentage of one core."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)


def sse_bytes_per_second(url: str, seconds: float) -> tuple[float, int]:
    """(bytes/s, events) of the timeline stream after its first event (the history)."""
    size = events = 0
    with httpx.stream("GET", url + "/sage/v1/timeline/stream", timeout=30) as response:
        response.raise_for_status()
        lines = response.iter_lines()
        for line in lines:  # the history, then the first blank line
            if not line:
                break
        started = time.monotonic()
        for line in lines:
            size += len(line) + 1
            events += line.startswith("event:")
            if time.monotonic() - started >= seconds:
                break
    return size / (time.monotonic() - started), events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="wall time of each CPU reading")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        sys.exit(f"no {CHROMIUM}: apt-get install chromium")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    print_header("dashboard: page weight and the daemon's CPU with a dashboard tab open")
    workdir = Path(tempfile.mkdtemp(prefix="sage-dashboard-bench-"))
    daemon = start_daemon(threads=2, parallel=4, n_ctx=2048, workdir=workdir, with_all_models=True)
    pid = daemon.proc.pid
    try:
        httpx.post(daemon.url + "/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
                   timeout=120).raise_for_status()  # something on the timeline
        time.sleep(5)
        idle: list[float] = []
        overview: list[float] = []
        queue: list[float] = []
        weight: dict[str, int] = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            for _ in range(args.rounds):
                idle.append(share_of_a_core(pid, args.seconds))
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                recording = [not weight]  # the first load of the overview only

                def record(request: Any, recording: list[bool] = recording) -> None:
                    if recording[0]:
                        weight[request.url] = request.sizes()["responseBodySize"]

                page.on("requestfinished", record)
                page.goto(daemon.url + "/")
                page.wait_for_function("document.getElementById('live') && document.getElementById('live').dataset.state === 'live'", timeout=60_000)
                page.wait_for_selector("#overview-models [data-model='minilm']")
                time.sleep(3)  # not "networkidle": the SSE stream stays open
                recording[0] = False
                time.sleep(2)
                overview.append(share_of_a_core(pid, args.seconds))
                page.click("nav a[data-page='queue']")
                page.wait_for_selector(".chart canvas")
                time.sleep(2)
                queue.append(share_of_a_core(pid, args.seconds))
                page.close()
                time.sleep(2)
            idle.append(share_of_a_core(pid, args.seconds))
            browser.close()
        rate, events = sse_bytes_per_second(daemon.url, 10.0)
    finally:
        daemon.stop()
    files = {url.split("/", 3)[-1] or "/": size for url, size in weight.items() if url}
    total = sum(files.values())
    print(f"daemon pid {pid}, {args.rounds} rounds of {args.seconds:.0f} s per reading (CPU ticks are 10 ms)")
    print()
    print("page weight of the overview (response bodies as sent):")
    for name, size in sorted(files.items(), key=lambda kv: -kv[1]):
        print(f"  {size:>9,d} B  {name}")
    print(f"  {total:>9,d} B  total, {len(files)} requests")
    print(f"timeline SSE stream: {rate:.0f} B/s ({events} events in 10 s)")
    print()
    base = statistics.median(idle)
    print("| daemon CPU, % of one core | readings | median | above idle |")
    print("|---|---|---|---|")
    print(f"| no page open | {' / '.join(f'{v:.2f}' for v in idle)} | {base:.2f} | |")
    for name, values in (("overview open", overview), ("queue page open (charts)", queue)):
        median = statistics.median(values)
        print(f"| {name} | {' / '.join(f'{v:.2f}' for v in values)} | {median:.2f} | {median - base:+.2f} |")
    worst = max(statistics.median(overview), statistics.median(queue)) - base
    print()
    print(f"target: a dashboard tab costs the idle daemon ≤ 1% of a core: {'PASS' if worst <= 1.0 else 'MISS'} ({worst:+.2f} points)")


if __name__ == "__main__":
    main()
