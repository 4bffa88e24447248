"""What idle KV cells cost a decoding sequence in llama.cpp's unified cache.

    flock /tmp/sage-heavy.lock python benchmarks/idle_cells.py [--threads 2] [--reps 3]

One sequence decodes 128 greedy tokens while another sequence holds N cells it no longer uses
(an idle slot kept for prefix reuse). Every decode step reads all used cells (masked, but read),
so N sizes the engine's idle-cache budget (`idle_cache_tokens`). llama.cpp's low-level API
alone, no daemon; the baseline is N = 0, measured in the same process between the others.
"""

from __future__ import annotations

import argparse
import statistics

import llama_cpp as L

from _llama import feed, greedy_tokens_per_s, load_smollm2
from _machine import print_header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cells", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    args = parser.parse_args()
    print_header("idle KV cells against a decoding sequence (llama.cpp unified cache)")
    model, _quiet = load_smollm2()  # the callback stays referenced until main returns
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch, cparams.n_seq_max = 8 * 4096, 512, 512, 8
    cparams.n_threads = cparams.n_threads_batch = args.threads
    cparams.kv_unified = True
    ctx = L.llama_init_from_model(model, cparams)
    memory = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(512, 0, 1)
    greedy = L.llama_sampler_init_greedy()

    def tokens_per_s(idle_cells: int) -> float:
        L.llama_memory_clear(memory, True)
        if idle_cells:
            feed(ctx, batch, 1, [100 + i % 1000 for i in range(idle_cells)], 0)
        return greedy_tokens_per_s(ctx, batch, greedy)

    try:
        tokens_per_s(0)  # warm up
        print("| idle cells | tok/s | ratio to 0 idle cells (median of rounds) |")
        print("|---|---|---|")
        for cells in args.cells:
            ratios, rates = [], []
            for _ in range(args.reps):  # the baseline runs next to each measurement: the machine drifts
                base = tokens_per_s(0)
                rate = tokens_per_s(cells)
                rates.append(rate)
                ratios.append(rate / base)
            print(f"| {cells} | {statistics.median(rates):.1f} | {statistics.median(ratios):.2f}× |", flush=True)
    finally:
        L.llama_batch_free(batch)
        L.llama_sampler_free(greedy)
        L.llama_free(ctx)
        L.llama_model_free(model)


if __name__ == "__main__":
    main()
