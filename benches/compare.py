"""tallow against llama-cpp-python on the same GGUF file and cores, in one run.

    python benches/compare.py --model tests/.models/smollm2-135m-q4_1.gguf --threads 2 --reps 5 \\
        --json compare.json

Each repetition runs each engine in a fresh process (so load time and peak RSS are its own),
alternating which goes first; the table shows medians. One unmeasured run of each engine comes
first, after the file has been read once, so both start from the file in the page cache, and
tallow from its repack cache (the repacked copies of the weights that its first load of a file
writes, see ``tallow.Model``); that run's load times are printed as the very first load. Each
repetition also runs a first use of the file in each engine: a process that loads it (tallow
with an empty repack cache of its own) and streams the first token of a 32-token prompt, so the
table's "first load" rows are medians too: what a user's first load of a file costs against
llama.cpp's load (which has no cache), until the model is usable and until its first token.
tallow's first load returns before its repack cache file is written (a background thread packs
the weights, and a generation that needs one first packs it itself); that process then waits
for the file, and the time to that point is printed under the table. ``--repack-cache off``
measures tallow repacking on every load instead. Both are driven
from Python as a user would (``tallow.Model.stream`` / ``llama_cpp.Llama.generate``, token by
token), greedy, through the same harness (``python/tallow/bench.py``): prefill rate (512-token
prompt), time to first token (32-token prompt), decode rate (128 tokens), load time, peak RSS;
with ``--context-tokens N``, also the decode rate after an N-token prompt.

It also probes streaming read bandwidth (numpy, one reader per thread) right before and right
after every run, and prints the decode rate that bandwidth allows (bandwidth / bytes of weights
read per token) and each engine's decode as a share of it, run by run: on a shared machine the
bandwidth moves by a factor of two within minutes (27 to 54 GB/s on our CI host), so a probe taken
at another moment than the decode says little about it.

Needs tallow, llama-cpp-python, numpy and gguf in one environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("tallow", "llama.cpp")
METRICS = [
    # key, label, unit, higher is better
    ("prefill_tok_s", "prefill", "tok/s", True),
    ("decode_tok_s", "decode", "tok/s", True),
    ("ttft_s", "first token (32-token prompt)", "ms", False),
    ("load_s", "load", "ms", False),
    ("peak_rss_mb", "peak RSS", "MiB", False),
]


def _bench_module() -> Any:
    """python/tallow/bench.py, loaded by path so the llama.cpp process does not load tallow."""
    spec = importlib.util.spec_from_file_location("tallow_bench", ROOT / "python" / "tallow" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tallow_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def worker(side: str, model: str, threads: int, n_ctx: int, args: argparse.Namespace) -> dict[str, Any]:
    """One engine in this process: load, measure once (unless ``--load-only``), report peak RSS."""
    bench = _bench_module()
    t0 = time.perf_counter()
    if side == "tallow":
        import tallow  # type: ignore[import-not-found]

        tm = tallow.Model(model, n_threads=threads, n_ctx=n_ctx, repack_cache=args.repack_cache == "on")
        load_s = time.perf_counter() - t0
        repack_cache: str = tm.info.repack_cache

        def stream(prompt: str, max_tokens: int) -> Any:
            return tm.stream(prompt, max_tokens=max_tokens, temperature=0.0)

        def count(text: str) -> int:
            return len(tm.tokenize(text))

    else:
        import llama_cpp

        repack_cache = "n/a"

        llm = llama_cpp.Llama(
            model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        load_s = time.perf_counter() - t0

        def stream(prompt: str, max_tokens: int) -> Any:
            # `Llama.generate` yields every token as it is sampled (greedy at temp 0), where
            # `create_completion(stream=True)` holds text back until its UTF-8 is complete: on a
            # synthetic model's random byte tokens that would time a burst, not a stream. It
            # also skips the completion wrapper's per-token work, so llama.cpp gets the
            # cheaper loop.
            llm.reset()  # measure a fresh prompt, never a cached prefix
            tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            eos = llm.token_eos()
            for i, tok in enumerate(llm.generate(tokens, temp=0.0, reset=True)):
                if tok == eos or i == max_tokens:
                    return
                yield tok

        def count(text: str) -> int:
            return len(llm.tokenize(text.encode()))

    if args.load_only:
        return first_use(side, bench, stream, count, t0, load_s, repack_cache)
    m = bench.measure(
        stream,
        count,
        prompt_tokens=args.prompt_tokens,
        ttft_tokens=32,
        gen_tokens=args.gen_tokens,
        context_tokens=args.context_tokens,
    )
    out: dict[str, Any] = m.as_dict()
    out["load_s"] = load_s
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["repack_cache"] = repack_cache
    return out


def first_use(
    side: str, bench: Any, stream: Any, count: Any, t0: float, load_s: float, repack_cache: str
) -> dict[str, Any]:
    """The rest of a first-use process: the first token of a 32-token prompt, then (tallow) the
    wait for the repack cache file that the load started writing."""
    prompt = bench.prose_prompt(32, count, "Tale 0")
    t1 = time.perf_counter()
    first, _, _ = bench.time_stream(stream, prompt, 1)
    out: dict[str, Any] = {"load_s": load_s, "first_token_s": t1 + first - t0}
    if side == "tallow":
        from tallow import _tallow  # type: ignore[import-not-found]

        _tallow.wait_for_repack_writes()
        out["cache_written_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["repack_cache"] = repack_cache
    return out


def read_bandwidth(data: Any, threads: int, reps: int = 3) -> float:
    """Best streaming read bandwidth of ``reps`` passes in GB/s: ``threads`` numpy readers
    taking the maximum of disjoint parts of ``data``. The maximum, not the sum: numpy's float
    sum is a chain of adds that a 2.1 GHz core cannot run as fast as memory delivers (14 against
    24 GB/s with two readers on a Xeon of our CI), its SIMD maximum can."""
    import numpy as np

    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(reps):
        ts = [threading.Thread(target=np.max, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, data.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def probe_worker(threads: int) -> None:
    """Answers each line on stdin with a bandwidth probe over 1 GiB allocated once."""
    import numpy as np

    data = np.ones(2**30 // 8, dtype=np.float64)
    for _ in sys.stdin:
        print(read_bandwidth(data, threads), flush=True)


class BandwidthProbe:
    """A process that probes read bandwidth on request. Its own process, because a child
    inherits its parent's peak RSS (Linux keeps ``ru_maxrss`` across fork and exec): the engines'
    workers must not be started from a process holding the probe's 1 GiB."""

    def __init__(self, threads: int) -> None:
        cmd = [sys.executable, __file__, "--worker", "probe", "--model", "-", "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def best(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def bytes_per_token(model: str) -> int:
    """Weight bytes a decode step reads: every tensor, except the embedding table when a separate
    output matrix exists (then only one embedding row is read)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(model).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


def read_through(path: Path) -> None:
    """Reads the file once, so that both engines' first runs find it in the page cache: whichever
    ran first would otherwise also pay for reading it from disk (1.7B Q4_K_M on our CI machine:
    a 1.1 GB file read at 75-400 MB/s)."""
    with path.open("rb", buffering=0) as f:
        while f.read(16 << 20):
            pass


def run_side(side: str, args: argparse.Namespace, env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", side, "--model", str(args.model)]
    cmd += ["--threads", str(args.threads), "--n-ctx", str(args.n_ctx), "--repack-cache", args.repack_cache]
    cmd += ["--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    cmd += ["--context-tokens", str(args.context_tokens)]
    if env is not None:
        cmd.append("--load-only")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def first_load(side: str, args: argparse.Namespace) -> dict[str, Any]:
    """A first use of the file (`first_use`); tallow's with an empty repack cache of its own,
    deleted afterwards."""
    home = tempfile.mkdtemp(prefix="tallow-compare-")
    try:
        return run_side(side, args, env=dict(os.environ, TALLOW_HOME=home))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tallow vs llama-cpp-python, side by side.")
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per engine (medians reported)")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument(
        "--context-tokens", type=int, default=0, help="also decode after a prompt of this many tokens"
    )
    ap.add_argument("--json", type=Path, help="write the raw runs and medians here")
    ap.add_argument(
        "--repack-cache",
        choices=("on", "off"),
        default="on",
        help="tallow's repack cache (default on, as for users)",
    )
    ap.add_argument("--worker", choices=(*SIDES, "probe"), help=argparse.SUPPRESS)
    ap.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    args.n_ctx = max(args.n_ctx, _bench_module().context_room(args.context_tokens, args.gen_tokens))
    if args.worker == "probe":
        probe_worker(args.threads)
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.model), args.threads, args.n_ctx, args)))
        return 0

    read_through(args.model)
    probe = BandwidthProbe(args.threads)
    # Wait for the probe's 1 GiB to be allocated and filled: it would slow the first runs.
    probe.best()
    first = {side: run_side(side, args) for side in SIDES}
    print(f"first runs (not measured): {first}", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    first_loads: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for rep in range(args.reps):
        order = SIDES if rep % 2 == 0 else SIDES[::-1]
        for side in order if args.repack_cache == "on" else ():
            first_loads[side].append(first_load(side, args))
            print(f"rep {rep + 1}/{args.reps} {side} first use: {first_loads[side][-1]}", file=sys.stderr)
        for side in order:
            before = probe.best()
            run = run_side(side, args)
            # The higher of the two probes: the larger bound, the smaller share.
            run["read_bandwidth_gbps"] = max(before, probe.best())
            runs[side].append(run)
            print(f"rep {rep + 1}/{args.reps} {side}: {run}", file=sys.stderr)
    probe.close()
    # Only now: reading the file's tensor table grows this process's RSS, which the workers
    # started from it would inherit as their peak.
    bpt = bytes_per_token(str(args.model))
    for run in (r for side in SIDES for r in runs[side]):
        run["decode_bound_tok_s"] = run["read_bandwidth_gbps"] * 1e9 / bpt
        run["decode_of_bound"] = run["decode_tok_s"] / run["decode_bound_tok_s"]
    metrics = list(METRICS)
    if args.context_tokens > 0:
        metrics.insert(
            2, ("context_decode_tok_s", f"decode after {args.context_tokens} tokens", "tok/s", True)
        )
    keys = [m[0] for m in metrics] + ["read_bandwidth_gbps", "decode_bound_tok_s", "decode_of_bound"]
    med = {s: {k: statistics.median(r[k] for r in runs[s]) for k in keys} for s in SIDES}
    statuses = sorted({r["repack_cache"] for r in runs["tallow"]})
    probes = [r["read_bandwidth_gbps"] for s in SIDES for r in runs[s]]

    print(f"\n{args.model.name}, {args.threads} threads, medians of {args.reps} runs each\n")
    print("| metric | tallow | llama.cpp | tallow / llama.cpp |")
    print("|---|---|---|---|")
    for key, label, unit, _higher in metrics:
        scale = 1000.0 if unit == "ms" and key.endswith("_s") else 1.0
        a, b = med["tallow"][key] * scale, med["llama.cpp"][key] * scale
        print(f"| {label} ({unit}) | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    written = ""
    if first_loads["tallow"]:
        # llama.cpp has no cache: each of its loads is a first load.
        keys = ("load_s", "first_token_s", "peak_rss_mb")
        fl = {s: {k: statistics.median(r[k] for r in first_loads[s]) for k in keys} for s in SIDES}
        rows = [
            ("load_s", "first load, model usable (ms)", 1000),
            ("first_token_s", "first load + first token, 32-token prompt (ms)", 1000),
            ("peak_rss_mb", "peak RSS of that process (MiB)", 1),
        ]
        for key, label, scale in rows:
            a, b = scale * fl["tallow"][key], scale * fl["llama.cpp"][key]
            print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
        done = statistics.median(r["cache_written_s"] for r in first_loads["tallow"])
        written = f"tallow's first-use processes had their repack cache files written {1000 * done:.0f} ms "
        written += "after they started (median). "
    print(
        f"\nread bandwidth probed around each run {min(probes):.1f}-{max(probes):.1f} GB/s; "
        f"{bpt / 2**20:.1f} MiB of weights per token -> decode bound "
        f"{min(probes) * 1e9 / bpt:.0f}-{max(probes) * 1e9 / bpt:.0f} tok/s. Decode / the bound "
        f"probed around the same run, median: tallow {100 * med['tallow']['decode_of_bound']:.0f}%, "
        f"llama.cpp {100 * med['llama.cpp']['decode_of_bound']:.0f}%"
    )
    t_first, l_first = (1000 * first[s]["load_s"] for s in SIDES)
    first_status = first["tallow"]["repack_cache"]
    print(
        f"{written}First, unmeasured run: load tallow {t_first:.0f} ms (repack cache {first_status}), "
        f"llama.cpp {l_first:.0f} ms; tallow's repack cache in the measured runs: {', '.join(statuses)}"
    )
    if args.json:
        report = {
            "model": str(args.model),
            "threads": args.threads,
            "first_runs": first,
            "first_loads": first_loads,
            "runs": runs,
            "medians": med,
            "bytes_per_token": bpt,
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
