"""Do other engine threads in the process slow llama.cpp's decoding?

    flock /tmp/sage-heavy.lock python benchmarks/engine_threads.py [--threads 2] [--reps 3]

The daemon runs each engine on a thread of its own: a llama.cpp decode loop per model, a worker
for sentence-transformers. Engine A decodes 128 greedy tokens on its thread (the baseline,
measured first), then again after engine B (a second context) decoded on a second thread, then
after torch ran a parallel op on a third thread. Steps never overlap (each waits for the last),
as the daemon's CPU gate has them. With a llama.cpp built with OpenMP, one libgomp serves all
threads: once more threads own an OpenMP team than there are cores, libgomp stops spinning at
llama.cpp's barriers and each step waits on futexes. A build without OpenMP (ggml's own
threads, what scripts/install.sh installs) is not affected.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp as L

from _llama import greedy_tokens_per_s, load_smollm2
from _machine import print_header

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sage_daemon.engines.llamacpp import llama_cpp_uses_openmp  # noqa: E402


class Worker(threading.Thread):
    """A long-lived thread that runs the calls given to it, one at a time (an engine's thread)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._calls: list[tuple[Callable[[], Any], list[Any], threading.Event]] = []
        self._cond = threading.Condition()
        self.start()

    def call(self, fn: Callable[[], Any]) -> Any:
        box: list[Any] = []
        done = threading.Event()
        with self._cond:
            self._calls.append((fn, box, done))
            self._cond.notify()
        done.wait()
        return box[0]

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._calls:
                    self._cond.wait()
                fn, box, done = self._calls.pop(0)
            box.append(fn())
            done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print_header("llama.cpp decoding beside other engine threads")
    model, _quiet = load_smollm2()  # the callback stays referenced until main returns
    print(f"llama.cpp built with OpenMP: {'yes' if llama_cpp_uses_openmp() else 'no'}\n")

    def context() -> tuple[Any, Any, Any]:
        cparams = L.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch = 4096, 512
        cparams.n_threads = cparams.n_threads_batch = args.threads
        return L.llama_init_from_model(model, cparams), L.llama_batch_init(512, 0, 1), L.llama_sampler_init_greedy()

    def tokens_per_s(ctx: Any, batch: Any, greedy: Any) -> float:
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        return greedy_tokens_per_s(ctx, batch, greedy)

    engine_a, engine_b = Worker(), Worker()
    a, b = engine_a.call(context), engine_b.call(context)

    def median_speed() -> float:
        return statistics.median(engine_a.call(lambda: tokens_per_s(*a)) for _ in range(args.reps))

    rows = [("engine A alone", median_speed())]
    engine_b.call(lambda: tokens_per_s(*b))
    rows.append(("after engine B decoded on a second thread", median_speed()))
    import torch

    torch.set_num_threads(args.threads)
    Worker().call(lambda: float((torch.randn(1024, 1024) @ torch.randn(1024, 1024)).sum()))
    rows.append(("after torch ran on a third thread", median_speed()))
    base = rows[0][1]
    print("| engine A, 128 tokens | tok/s | ratio |\n|---|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.0f} | {value / base:.2f}× |")


if __name__ == "__main__":
    main()
