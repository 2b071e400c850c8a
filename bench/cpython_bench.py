"""CPython multiprocessing side of mpctl's benchmark (driven by mpctl-bench).

Usage: python3 cpython_bench.py CASE N

Prints one JSON object {"samples": [...], "unit": "..."} on stdout.

Cases (METHOD is fork, spawn or forkserver):
  startjoin:METHOD   N samples of Process(target=noop).start() + join(), in ms
  seq:METHOD         1 sample: N start+join one after another, in starts/s
  concurrent:METHOD  1 sample: N processes started at once, then all joined,
                     in starts/s
  notify:METHOD      N samples of child exit -> join() returned, in ms
  pool-default       1 sample: Pool(2).map(square, range(N)), items/s
  pool-chunk1        1 sample: the same with chunksize=1, items/s
  pool-1ms           1 sample: N tasks of 1 ms CPU each on Pool(2), chunksize=1,
                     elapsed / ideal (ideal = N * 1 ms / 2)
  pool-10ms          the same with 10 ms tasks

Every context is warmed up with one process first (for forkserver this
starts the fork server, so its start-up is never measured). Every process's
exit code is checked.
"""

import json
import multiprocessing as mp
import os
import sys
import time


def noop():
    pass


def square(x):
    return x * x


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def stamp_child(ready, go, value):
    ready.set()
    go.wait()
    # The last thing before the process exits, as in mpctl's `stamp` child.
    # os._exit skips multiprocessing's own shutdown after the target
    # (flushes, finalizers): not part of learning of an exit, and it moved
    # CPython's median by a fifth from one run to the next.
    value.value = time.monotonic_ns()
    os._exit(0)


def checked(p):
    if p.exitcode != 0:
        raise SystemExit(f"child exited with {p.exitcode}")


def run_one(ctx):
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    checked(p)


def warm(ctx):
    run_one(ctx)


def startjoin(ctx, n):
    warm(ctx)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        run_one(ctx)
        out.append((time.perf_counter() - t) * 1e3)
    return out, "ms"


def seq(ctx, n):
    warm(ctx)
    t = time.perf_counter()
    for _ in range(n):
        run_one(ctx)
    return [n / (time.perf_counter() - t)], "starts/s"


def concurrent(ctx, n):
    warm(ctx)
    t = time.perf_counter()
    ps = [ctx.Process(target=noop) for _ in range(n)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    elapsed = time.perf_counter() - t
    for p in ps:
        checked(p)
    return [n / elapsed], "starts/s"


def notify(ctx, n):
    warm(ctx)
    out = []
    for _ in range(n):
        ready, go = ctx.Event(), ctx.Event()
        value = ctx.Value("q", 0, lock=False)
        p = ctx.Process(target=stamp_child, args=(ready, go, value))
        p.start()
        ready.wait()
        go.set()
        p.join()
        now = time.monotonic_ns()
        checked(p)
        out.append((now - value.value) / 1e6)
    return out, "ms"


def pool_rate(n, chunksize):
    with mp.Pool(2) as pool:
        pool.map(square, range(1000))  # warm up both workers
        t = time.perf_counter()
        pool.map(square, range(n), chunksize=chunksize)
        return [n / (time.perf_counter() - t)], "items/s"


def pool_overhead(n, task_s):
    with mp.Pool(2) as pool:
        pool.map(square, range(100))
        t = time.perf_counter()
        pool.map(spin, [task_s] * n, chunksize=1)
        elapsed = time.perf_counter() - t
    return [elapsed / (n * task_s / 2)], "elapsed/ideal"


def main():
    case, n = sys.argv[1], int(sys.argv[2])
    name, _, method = case.partition(":")
    per_method = {
        "startjoin": startjoin,
        "seq": seq,
        "concurrent": concurrent,
        "notify": notify,
    }
    if name in per_method:
        samples, unit = per_method[name](mp.get_context(method), n)
    elif name == "pool-default":
        samples, unit = pool_rate(n, None)
    elif name == "pool-chunk1":
        samples, unit = pool_rate(n, 1)
    elif name == "pool-1ms":
        samples, unit = pool_overhead(n, 0.001)
    elif name == "pool-10ms":
        samples, unit = pool_overhead(n, 0.010)
    else:
        raise SystemExit(f"unknown case {case!r}")
    print(json.dumps({"samples": samples, "unit": unit}))


if __name__ == "__main__":
    main()
