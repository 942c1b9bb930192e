#!/usr/bin/env python3
"""ferry-bench's Python twin: what a call from Python costs over the same
call from C++, in one process, on one prepared transfer.

Two processes on this host: a target that allocates memory and progresses,
and this initiator, which prepares a WRITE of `batch` blocks into it and
times, alternately, a Python loop of post + check until done and the same
loop run in C++ by the module (Backend._post_check_loop). Over mapped shared
memory (host_ipc: allocate() on both sides) the copy happens inside post, so
the difference is the cost of crossing into Python and back. It also times
prepare() of --prepare-blocks descriptors handed over as an (N, 3) numpy
array against the C++ prepare of the same list (already converted).
"""
import argparse
import json
import multiprocessing
import statistics
import sys
import time

import numpy as np

import ferry


def target(conn, tls, progress, size):
    with ferry.Backend("bench-target", progress=progress, tls=tls) as b:
        region = b.allocate(size)
        conn.send((b.metadata(), region.addr))
        b.load(conn.recv())
        # Before the initiator may finish: its worker must outlive this load.
        conn.send("loaded")
        while not conn.poll():
            b.progress()
        conn.recv()


def nixl_row(a, blob, remote, size, batch):
    """transfer + check_xfer_state through ferry.nixl against post + check on the agent's own backend."""
    from ferry.nixl import nixl_agent, nixl_agent_config

    agent = nixl_agent("bench-nixl", nixl_agent_config(enable_prog_thread=a.progress == "thread"))
    local = np.zeros(size, dtype=np.uint8)
    agent.register_memory(local)
    name = agent.add_remote_agent(blob)
    agent.make_connection(name)
    offsets = np.arange(batch, dtype=np.uint64) * a.block_size
    descs_l = np.stack([local.ctypes.data + offsets, np.full(batch, a.block_size, np.uint64),
                        np.zeros(batch, np.uint64)], axis=1)
    descs_r = descs_l.copy()
    descs_r[:, 0] = remote + offsets
    h = agent.initialize_xfer("WRITE", agent.get_xfer_descs(descs_l, "DRAM"), agent.get_xfer_descs(descs_r, "DRAM"),
                              name)
    backend, in_progress = agent._backend, ferry.Status.IN_PROGRESS
    transfer, check_state, post, check = agent.transfer, agent.check_xfer_state, backend.post, backend.check
    nx, direct = [], []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        for _ in range(a.iters):
            s = transfer(h)
            while s == "PROC":
                s = check_state(h)
        nx.append((time.perf_counter() - t0) / a.iters * 1e6)
        if s != "DONE":
            raise SystemExit(f"ferry_bench.py: a facade transfer ended {s}")
        t0 = time.perf_counter()
        for _ in range(a.iters):
            s = post(h.xfer)
            while s == in_progress:
                s = check(h.xfer)
        direct.append((time.perf_counter() - t0) / a.iters * 1e6)
    agent.release_xfer_handle(h)
    nixl_us, direct_us = statistics.median(nx), statistics.median(direct)
    return {"nixl_us": nixl_us, "direct_us": direct_us, "nixl_overhead_us": nixl_us - direct_us}


def positive_ints(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tls", default="shm", help="UCX transports (UCX_TLS) [shm]")
    p.add_argument("--progress", choices=("inline", "thread"), default="inline", help="progress policy [inline]")
    p.add_argument("--block-size", type=int, default=64, help="bytes per block [64]")
    p.add_argument("--batch", type=positive_ints, default=[1, 16, 1024], help="blocks per transfer [1,16,1024]")
    p.add_argument("--iters", type=int, default=20000, help="posts per measurement [20000]")
    p.add_argument("--reps", type=int, default=5, help="measurements per side and row; medians shown [5]")
    p.add_argument("--prepare-blocks", type=int, default=100000,
                   help="descriptors in the prepare measurement (0: skip it) [100000]")
    p.add_argument("--nixl", action="store_true",
                   help="also time the NIXL facade (ferry.nixl: transfer + check_xfer_state) against the same "
                        "transfer posted through ferry's own Python API, on one agent's backend")
    p.add_argument("--json", help="write the rows to this file")
    a = p.parse_args()
    if a.block_size <= 0 or a.iters <= 0 or a.reps <= 0 or a.prepare_blocks < 0:
        p.error("--block-size, --iters and --reps must be positive, --prepare-blocks >= 0")

    # Room for the largest batch and the prepare list, blocks back to back.
    size = a.block_size * max(max(a.batch), a.prepare_blocks, 1)
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=target, args=(child_conn, a.tls, a.progress, size))
    child.start()
    rows = []
    try:
        with ferry.Backend("bench-initiator", progress=a.progress, tls=a.tls) as b:
            blob, remote = conn.recv()
            local = b.allocate(size)
            conn.send(b.metadata())
            if conn.recv() != "loaded":
                raise SystemExit("ferry_bench.py: the target did not load our metadata")
            peer = b.load(blob)
            b.connect(peer)
            print(f"# ferry {ferry.__version__}, tls {a.tls}, progress {a.progress}, {a.block_size} B blocks, "
                  f"{a.iters} posts per measurement, medians of {a.reps}")
            print(f"{'batch':>7} {'path':>9} {'python us':>10} {'c++ us':>8} {'overhead us':>12} {'ratio':>6}")
            for batch in a.batch:
                offsets = np.arange(batch, dtype=np.uint64) * a.block_size
                descs_l = np.stack([local.addr + offsets, np.full(batch, a.block_size, np.uint64),
                                    np.zeros(batch, np.uint64)], axis=1)
                descs_r = descs_l.copy()
                descs_r[:, 0] = remote + offsets
                x = b.prepare("write", descs_l, descs_r, peer, coalesce=False)
                post, check, in_progress = b.post, b.check, ferry.Status.IN_PROGRESS
                b._post_check_loop(x, min(a.iters, 1000))  # warm-up
                py, cc = [], []
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    for _ in range(a.iters):
                        s = post(x)
                        while s == in_progress:
                            s = check(x)
                    py.append((time.perf_counter() - t0) / a.iters * 1e6)
                    if s != ferry.Status.OK:
                        raise SystemExit(f"ferry_bench.py: a transfer ended {s}")
                    cc.append(b._post_check_loop(x, a.iters) / a.iters * 1e6)
                py_us, cc_us = statistics.median(py), statistics.median(cc)
                row = {"batch": batch, "block_size": a.block_size, "path": b.path_of(x), "python_us": py_us,
                       "cpp_us": cc_us, "overhead_us": py_us - cc_us, "ratio": py_us / cc_us}
                rows.append(row)
                print(f"{batch:>7} {row['path']:>9} {py_us:>10.3f} {cc_us:>8.3f} {py_us - cc_us:>12.3f} "
                      f"{py_us / cc_us:>6.2f}")
                b.release(x)
                if a.nixl:
                    row.update(nixl_row(a, blob, remote, size, batch))
                    print(f"{'':>7} {'nixl':>9} {row['nixl_us']:>10.3f} {row['direct_us']:>8.3f} "
                          f"{row['nixl_overhead_us']:>12.3f} {row['nixl_us'] / row['direct_us']:>6.2f}"
                          f"   (facade vs ferry's Python API)")
            if a.prepare_blocks:
                n = a.prepare_blocks
                # Every other block: nothing to coalesce, n operations.
                offsets = np.arange(n, dtype=np.uint64) * a.block_size
                descs_l = np.stack([local.addr + offsets, np.full(n, a.block_size // 2, np.uint64),
                                    np.zeros(n, np.uint64)], axis=1)
                descs_r = descs_l.copy()
                descs_r[:, 0] = remote + offsets
                py, cc = [], []
                for _ in range(a.reps):
                    t0 = time.perf_counter()
                    x = b.prepare("write", descs_l, descs_r, peer)
                    py.append((time.perf_counter() - t0) * 1e3)
                    b.release(x)
                    x, seconds = b._prepare_timed("write", descs_l, descs_r, peer)
                    cc.append(seconds * 1e3)
                    b.release(x)
                py_ms, cc_ms = statistics.median(py), statistics.median(cc)
                rows.append({"prepare_blocks": n, "python_ms": py_ms, "cpp_ms": cc_ms, "ratio": py_ms / cc_ms})
                print(f"prepare of {n} descriptors from a numpy array: python {py_ms:.2f} ms, c++ {cc_ms:.2f} ms, "
                      f"ratio {py_ms / cc_ms:.2f}")
            conn.send("bye")
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    if child.exitcode != 0:
        raise SystemExit(f"ferry_bench.py: the target exited with {child.exitcode}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
