#!/usr/bin/env python3
"""Moves "KV blocks" of several layers from one process into another's KV cache.

The target holds a KV cache of `layers` x `2 * blocks` pages (a numpy array,
or with --memory cuda a torch tensor on the GPU). The
initiator writes `blocks` pages of every layer, scattered over the layer's
pages, with one WRITE and one notification ("layer i") per layer; the target
checks each layer's bytes as its notification arrives and prints a line per
layer. Exits 0 only if every byte matched.

    PYTHONPATH=build/python python3 examples/python/kv_mover.py --layers 4 --blocks 64
"""

import argparse
import multiprocessing
import sys
import time

import numpy as np

import ferry


def pages_of(layer, blocks, pages, seed):
    """The pages of `layer` the initiator writes, in the order of its blocks."""
    return np.random.default_rng(seed + layer).permutation(pages)[:blocks]


def layer_bytes(layer, blocks, block_size, seed):
    """What block k of `layer` holds: every byte depends on the layer, the block and the offset."""
    k = np.arange(blocks, dtype=np.uint64)[:, None]
    off = np.arange(block_size, dtype=np.uint64)[None, :]
    return ((layer * 131 + k * 17 + off * 7 + (off >> 8) * 3 + seed) % 251).astype(np.uint8)


def backend(args, name, memory):
    config = {"tls": args.tls} if args.tls else {}
    return ferry.Backend(name, progress=args.progress, memory=memory, **config)


class HostCache:
    def __init__(self, b, size):
        self.array = np.zeros(size, dtype=np.uint8)
        self.region = b.register(self.array)

    def read_pages(self, page_offsets, block_size):
        return np.stack([self.array[o : o + block_size] for o in page_offsets])

    def close(self):
        self.region.close()


class DeviceCache:
    """A torch tensor on the GPU, registered through __cuda_array_interface__; torch reads pages back."""

    def __init__(self, b, size):
        import torch

        self.tensor = torch.zeros(size, dtype=torch.uint8, device="cuda")
        self.region = b.register(self.tensor)

    def read_pages(self, page_offsets, block_size):
        import torch

        torch.cuda.synchronize()
        return np.stack([self.tensor[o : o + block_size].cpu().numpy() for o in page_offsets])

    def close(self):
        self.region.close()


def run_target(args, conn):
    pages = 2 * args.blocks
    layer_size = pages * args.block_size
    b = backend(args, "kv-target", args.memory)
    cache = (DeviceCache(b, args.layers * layer_size) if args.memory == "cuda"
             else HostCache(b, args.layers * layer_size))
    conn.send((b.metadata(), cache.region.whole()))
    bad = 0
    seen = set()
    deadline = time.monotonic() + args.timeout
    while len(seen) < args.layers and time.monotonic() < deadline:
        b.wait_notifs(0.1)
        for sender, msg in b.poll_notifs():
            text = msg.decode(errors="replace")
            layer = int(text.split()[1]) if text.startswith("layer ") else -1
            if sender != "kv-initiator" or not 0 <= layer < args.layers or layer in seen:
                print(f"target: unexpected notification {msg!r} from {sender!r}", flush=True)
                bad += 1
                continue
            seen.add(layer)
            chosen = pages_of(layer, args.blocks, pages, args.seed)
            offsets = [(layer * pages + int(p)) * args.block_size for p in chosen]
            got = cache.read_pages(offsets, args.block_size)
            wrong = int(np.count_nonzero(got != layer_bytes(layer, args.blocks, args.block_size, args.seed)))
            bad += wrong
            print(f"target: layer {layer}: {args.blocks} blocks of {args.block_size} B from {sender}: "
                  f"{'ok' if wrong == 0 else f'{wrong} bytes wrong'}", flush=True)
    if len(seen) < args.layers:
        print(f"target: only {len(seen)} of {args.layers} layers arrived within {args.timeout} s", flush=True)
        bad += 1
    # Pages no layer was meant to get must still be zero.
    untouched = [((layer * pages) + int(p)) * args.block_size for layer in range(args.layers)
                 for p in np.setdiff1d(np.arange(pages), pages_of(layer, args.blocks, pages, args.seed))]
    stray = int(np.count_nonzero(cache.read_pages(untouched, args.block_size)))
    if stray:
        print(f"target: {stray} bytes changed outside the written blocks", flush=True)
    bad += stray
    conn.send(bad)
    conn.recv()  # the initiator is done with our memory
    cache.close()
    b.close()
    sys.exit(0 if bad == 0 else 1)


def run_initiator(args, conn):
    pages = 2 * args.blocks
    b = backend(args, "kv-initiator", args.memory)
    if not conn.poll(args.timeout):
        raise RuntimeError("the target sent no metadata")
    blob, (kv_addr, _, kv_dev) = conn.recv()
    peer = b.load(blob)
    layer_bytes_total = args.blocks * args.block_size
    if args.memory == "cuda":
        source = b.allocate_host(args.layers * layer_bytes_total)  # page-locked: the GPU copies from it
        staging = np.asarray(source)
    else:
        staging = np.empty(args.layers * layer_bytes_total, dtype=np.uint8)
        source = b.register(staging)
    xfers = []
    t0 = time.perf_counter()
    for layer in range(args.layers):
        base = layer * layer_bytes_total
        staging[base : base + layer_bytes_total] = layer_bytes(layer, args.blocks, args.block_size, args.seed).ravel()
        local = np.array([(source.addr + base + k * args.block_size, args.block_size, source.dev)
                          for k in range(args.blocks)], dtype=np.uint64)
        remote = np.array([(kv_addr + (layer * pages + int(p)) * args.block_size, args.block_size, kv_dev)
                           for p in pages_of(layer, args.blocks, pages, args.seed)], dtype=np.uint64)
        x = b.prepare(ferry.WRITE, local, remote, peer)
        status = b.post(x, f"layer {layer}")
        if status not in (ferry.Status.OK, ferry.Status.IN_PROGRESS):
            raise RuntimeError(f"layer {layer}: post returned {status.name}")
        xfers.append(x)
    path = b.path_of(xfers[0])
    for layer, x in enumerate(xfers):
        status = b.wait(x, timeout=args.timeout)
        if status != ferry.Status.OK:
            raise RuntimeError(f"layer {layer}: the WRITE ended {status.name}")
        b.release(x)
    seconds = time.perf_counter() - t0
    print(f"initiator: {args.layers} layers x {args.blocks} blocks of {args.block_size} B on {path} "
          f"in {seconds * 1e3:.1f} ms", flush=True)
    # Inline progress: this process keeps answering UCX while the target checks.
    deadline = time.monotonic() + args.timeout
    while not conn.poll(0.001):
        if time.monotonic() > deadline:
            raise RuntimeError("the target sent no verdict")
        if args.progress == "inline":
            b.progress()
    bad = conn.recv()
    conn.send("bye")
    staging = None  # with --memory cuda, a view of `source`, which must go before it
    source.close()
    b.close()
    return bad


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8, help="layers, one WRITE and notification each (8)")
    p.add_argument("--blocks", type=int, default=128, help="KV blocks written per layer (128)")
    p.add_argument("--block-size", type=int, default=4096, help="bytes per block (4096)")
    p.add_argument("--tls", help="UCX transports, e.g. shm or tcp (UCX's choice; GPU memory needs its CUDA ones)")
    p.add_argument("--progress", choices=("inline", "thread"), default="inline", help="progress policy (inline)")
    p.add_argument("--memory", choices=("host", "cuda"), default="host", help="where the KV cache lives (host)")
    p.add_argument("--seed", type=int, default=1, help="chooses the pages and the bytes (1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for anything (30)")
    args = p.parse_args()
    if min(args.layers, args.blocks, args.block_size) < 1:
        p.error("--layers, --blocks and --block-size must be at least 1")
    if args.memory == "cuda":
        try:
            import torch
        except ImportError:
            p.error("--memory cuda keeps the KV cache in a torch tensor: torch is not installed")
        if not ferry.has_cuda or not torch.cuda.is_available():
            p.error("--memory cuda needs a GPU, torch with CUDA and a ferry module built with CUDA")

    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    target = ctx.Process(target=run_target, args=(args, theirs))
    target.start()
    try:
        bad = run_initiator(args, mine)
    finally:
        target.join(args.timeout)
        if target.is_alive():
            target.kill()
            target.join()
    ok = bad == 0 and target.exitcode == 0
    print(f"{'every byte matched' if ok else 'FAILED'} ({bad} bad bytes, target exit code {target.exitcode})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
