"""How fast `sagectl --help` returns: the thin client must not import the daemon, torch or llama.cpp.

Baseline in the same run: `python -c pass` (the interpreter's own start-up). Target: well under
half a second for `sagectl --help` on this machine.

    python benchmarks/cli_startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _machine import print_header


def timed(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def imported_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print_header("sagectl start-up")
    baseline = timed([sys.executable, "-c", "pass"], args.runs)
    sagectl = timed([sys.executable, "-m", "sage_client.cli", "--help"], args.runs)
    heavy = {"sage_daemon", "torch", "llama_cpp", "vllm", "sentence_transformers", "numpy", "trio"}
    loaded = imported_modules("import sys; sys.argv=['sagectl','--help']\ntry:\n    import sage_client.cli as c; c.main(['--version'])\nexcept SystemExit: pass")
    bad = sorted(m for m in loaded if m.split(".")[0] in heavy)
    b, s = statistics.median(baseline), statistics.median(sagectl)
    print("| what | median | best | ratio to `python -c pass` |")
    print("|---|---|---|---|")
    print(f"| `python -c pass` (baseline) | {b * 1000:.0f} ms | {min(baseline) * 1000:.0f} ms | 1.00× |")
    print(f"| `sagectl --help` | {s * 1000:.0f} ms | {min(sagectl) * 1000:.0f} ms | {s / b:.2f}× |")
    print()
    print(f"heavy modules imported by sagectl: {', '.join(bad) or 'none'}")
    verdict = "PASS" if s < 0.5 and not bad else "MISS"
    print(f"target: `sagectl --help` < 500 ms and no heavy imports: {verdict} ({s * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
