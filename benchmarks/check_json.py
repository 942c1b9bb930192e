#!/usr/bin/env python3
"""Checks a ferry-bench --json file: well-formed, one object per row, exactly
the documented keys, sensible types. Never compares timings with limits."""
import argparse
import csv
import json
import math
import sys

STEP = ["p50_us", "p99_us", "min_us", "mean_us", "post_us", "complete_us"]
KEYS = (["op", "block_size", "batch", "mem", "pattern", "blocks", "entries", "prepare_us", "prepare_again_us", "gbps", "desc_per_s",
         "lat_p50_us", "lat_p99_us", "raw_gbps", "ratio", "memory", "path",
         "copy_gbps", "copy_ratio", "first_us", "raw_first_us",
         "connect_us", "first_after_load", "xfer_us", "tel_p50_us", "tel_p99_us", "raw_buffer"]
        + ["step_" + k for k in STEP] + ["raw_step_" + k for k in STEP]
        + ["step_gbps", "step_vs_bw", "raw_step_vs_bw", "step_ratio"]
        + ["nixl_us", "nixl_direct_us", "nixl_overhead_us"]
        + ["kernel_gbps", "kernel_ratio", "kernel_lat_us", "kernel_lat_ratio"])


def fail(msg):
    print(f"check_json: {msg}", file=sys.stderr)
    sys.exit(1)


def positive(row, i, key):
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        fail(f"row {i}: {key} should be a positive number, got {v!r}")


def check_first(row, i, a):
    positive(row, i, "first_us")
    if row["first_after_load"] is not (i == 0 or a.reload):
        fail(f"row {i}: first_after_load is {row['first_after_load']!r}")
    if row["first_after_load"] and not a.no_connect:
        positive(row, i, "connect_us")
    elif row["connect_us"] is not None:
        fail(f"row {i}: connect_us should be null: no connect before this row")
    if a.no_raw:
        if row["raw_first_us"] is not None or row["raw_buffer"] is not None:
            fail(f"row {i}: raw_first_us and raw_buffer should be null without a baseline")
    else:
        positive(row, i, "raw_first_us")
        if row["raw_buffer"] not in ("same", "own"):
            fail(f"row {i}: raw_buffer is {row['raw_buffer']!r}")
    if row["gbps"] is None:
        if row["xfer_us"] is not None:
            fail(f"row {i}: xfer_us without a bandwidth measurement")
    else:
        positive(row, i, "xfer_us")


def check_step(row, i, a):
    for side in ("step_", "raw_step_"):
        keys = [side + k for k in STEP]
        if not a.step or (side == "raw_step_" and a.no_raw):
            for key in keys:
                if row[key] is not None:
                    fail(f"row {i}: {key} was not measured, so it should be null")
            continue
        for key in keys:
            positive(row, i, key)
        if not row[side + "min_us"] <= row[side + "p50_us"] <= row[side + "p99_us"]:
            fail(f"row {i}: {side}min/p50/p99 are out of order")
        if row[side + "mean_us"] < row[side + "min_us"]:
            fail(f"row {i}: {side}mean_us is below {side}min_us")
    for key, raw in (("step_gbps", False), ("step_vs_bw", False), ("raw_step_vs_bw", True), ("step_ratio", True)):
        if a.step and not (raw and a.no_raw):
            positive(row, i, key)
        elif row[key] is not None:
            fail(f"row {i}: {key} was not measured, so it should be null")


def check_kernel(row, i, a):
    bw = ("kernel_gbps", "kernel_ratio")
    lat = ("kernel_lat_us", "kernel_lat_ratio")
    for key in bw + lat:
        if not a.kernel and row[key] is not None:
            fail(f"row {i}: {key} without --kernel")
    if a.kernel:
        for key in bw:
            positive(row, i, key)
        if a.latency:
            for key in lat:
                positive(row, i, key)


def check_nixl(row, i, a):
    keys = ("nixl_us", "nixl_direct_us", "nixl_overhead_us")
    if not a.nixl:
        for key in keys:
            if row[key] is not None:
                fail(f"row {i}: {key} without --nixl")
        return
    positive(row, i, "nixl_us")
    positive(row, i, "nixl_direct_us")
    # A difference of two timings: either sign, but a number.
    v = row["nixl_overhead_us"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        fail(f"row {i}: nixl_overhead_us should be a number, got {v!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("json")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--op", required=True)
    p.add_argument("--mem", required=True)
    p.add_argument("--pattern", required=True)
    p.add_argument("--latency", action="store_true", help="ping-pong columns must be set")
    p.add_argument("--csv", help="a --csv file that must hold the same rows")
    p.add_argument("--no-raw", action="store_true", help="run with --baseline none: raw columns must be null")
    p.add_argument("--step", action="store_true", help="run with --mode step: step columns must be set")
    p.add_argument("--reload", action="store_true", help="run with --reload-peer: every first transfer follows a load")
    p.add_argument("--no-connect", action="store_true", help="run with --no-connect: connect_us must be null")
    p.add_argument("--path", help="the path every row must report (ucx, cuda_ipc, host_ipc)")
    p.add_argument("--telemetry", action="store_true",
                   help="run with --telemetry: the histogram's p50 and p99 must be set, p50 <= p99")
    p.add_argument("--layers", type=int,
                   help="run with --pattern kv:N --strided: the longer list must hold one entry per page")
    p.add_argument("--runs", type=int,
                   help="run with --pattern runs:N --coalesce: every transfer must have become one block per run")
    p.add_argument("--nixl", action="store_true",
                   help="run with --nixl: the facade's and the direct times must be set, the difference a number")
    p.add_argument("--kernel", action="store_true",
                   help="run with --kernel: the kernels' GB/s and ratio must be set (and their latency with --latency)")
    a = p.parse_args()

    with open(a.json) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            fail(f"{a.json} is not well-formed JSON: {e}")
    if not isinstance(rows, list):
        fail("the top level should be an array of row objects")
    if len(rows) != a.rows:
        fail(f"{len(rows)} rows, expected {a.rows}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            fail(f"row {i} is not an object")
        if sorted(row) != sorted(KEYS):
            fail(f"row {i} has keys {sorted(row)}, expected exactly {sorted(KEYS)}")
        if row["op"] != a.op or row["mem"] != a.mem or row["pattern"] != a.pattern:
            fail(f"row {i}: op/mem/pattern are {row['op']}/{row['mem']}/{row['pattern']}")
        for key in ("block_size", "batch", "blocks", "entries"):
            if not isinstance(row[key], int) or row[key] <= 0:
                fail(f"row {i}: {key} should be a positive integer, got {row[key]!r}")
        if row["blocks"] > row["batch"]:
            fail(f"row {i}: {row['blocks']} blocks from {row['batch']} descriptors")
        if row["entries"] > row["batch"]:
            fail(f"row {i}: {row['entries']} entries from {row['batch']} blocks")
        if a.layers and row["entries"] != -(-row["batch"] // a.layers):
            fail(f"row {i}: {row['entries']} entries for {row['batch']} blocks of {a.layers} layers")
        if not a.layers and row["entries"] != row["batch"]:
            fail(f"row {i}: {row['entries']} entries, expected a descriptor per block")
        positive(row, i, "prepare_us")
        positive(row, i, "prepare_again_us")
        if a.telemetry:
            positive(row, i, "tel_p50_us")
            positive(row, i, "tel_p99_us")
            if row["tel_p50_us"] > row["tel_p99_us"]:
                fail(f"row {i}: telemetry p50 {row['tel_p50_us']} above p99 {row['tel_p99_us']}")
        elif row["tel_p50_us"] is not None or row["tel_p99_us"] is not None:
            fail(f"row {i}: telemetry figures without --telemetry")
        if a.runs and row["blocks"] != -(-row["batch"] // a.runs):
            fail(f"row {i}: {row['blocks']} blocks from {row['batch']} descriptors in runs of {a.runs}")
        for key in ("gbps", "desc_per_s"):
            positive(row, i, key)
        if row["memory"] not in ("host,host", "cuda,cuda", "cuda,host", "host,cuda"):
            fail(f"row {i}: memory is {row['memory']!r}")
        if row["path"] not in ("ucx", "cuda_ipc", "host_ipc"):
            fail(f"row {i}: path is {row['path']!r}")
        if a.path and row["path"] != a.path:
            fail(f"row {i}: path is {row['path']!r}, expected {a.path!r}")
        # The copy reference (memcpy of the same blocks on host memory) comes with every bandwidth row.
        positive(row, i, "copy_gbps")
        positive(row, i, "copy_ratio")
        for key in ("raw_gbps", "ratio"):
            if a.no_raw:
                if row[key] is not None:
                    fail(f"row {i}: {key} should be null without a baseline, got {row[key]!r}")
            else:
                positive(row, i, key)
        if a.latency:
            positive(row, i, "lat_p50_us")
            positive(row, i, "lat_p99_us")
            if row["lat_p99_us"] < row["lat_p50_us"]:
                fail(f"row {i}: p99 {row['lat_p99_us']} is below p50 {row['lat_p50_us']}")
        elif row["lat_p50_us"] is not None or row["lat_p99_us"] is not None:
            fail(f"row {i}: latency was not measured, so it should be null")

        check_first(row, i, a)
        check_step(row, i, a)
        check_nixl(row, i, a)
        check_kernel(row, i, a)

    if a.csv:
        with open(a.csv, newline="") as f:
            table = list(csv.reader(f))
        if not table or table[0] != KEYS:
            fail(f"{a.csv}: the header should be {','.join(KEYS)}")
        if len(table) - 1 != len(rows):
            fail(f"{a.csv}: {len(table) - 1} rows, the JSON has {len(rows)}")
        col = {key: KEYS.index(key) for key in ("block_size", "batch", "blocks", "path", "memory")}
        for i, (line, row) in enumerate(zip(table[1:], rows)):
            if (int(line[col["block_size"]]) != row["block_size"] or int(line[col["batch"]]) != row["batch"]
                    or int(line[col["blocks"]]) != row["blocks"] or line[col["path"]] != row["path"]
                    or line[col["memory"]] != row["memory"]):
                fail(f"{a.csv}: row {i} does not match the JSON")
    print(f"check_json: {a.json}: {len(rows)} rows, well-formed")


if __name__ == "__main__":
    main()
