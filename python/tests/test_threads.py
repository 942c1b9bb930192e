"""The thread policy under several Python threads; waits let the GIL go; inline backends stay on their thread."""

import threading

import numpy as np
import pytest

import ferry
from twoproc import TLS, Target, descs, fill_blocks, scattered

THREADS = 4
POSTS = 8
BLOCKS = 8
LENGTH = 2000
AREA = 1 << 18  # each thread's share of the target's memory


def run_threads(fn, count):
    """Runs fn(i) on `count` threads; re-raises the first failure."""
    failures = []

    def body(i):
        try:
            fn(i)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a thread did not finish"
    if failures:
        raise failures[0]


@pytest.mark.parametrize("tls", TLS)
def test_threads_post_concurrently_to_one_target(tls):
    target = Target(tls, THREADS * AREA, progress="thread")
    try:
        with ferry.Backend("initiator", tls=tls, progress="thread") as b:
            peer = b.load(target.blob)
            remote_offsets = {i: scattered(BLOCKS, LENGTH, 777, start=i * AREA) for i in range(THREADS)}
            local_offsets = scattered(BLOCKS, LENGTH, 13)

            def poster(i):
                # Even threads write allocated memory on whichever path prepare
                # picks, odd ones registered memory over UCX.
                where, path = ("alloc", "auto") if i % 2 == 0 else ("user", "ucx")
                local = np.zeros(BLOCKS * (LENGTH + 13), dtype=np.uint8)
                region = b.register(local)
                x = b.prepare(
                    "write", descs(region.addr, local_offsets, LENGTH, as_array=True),
                    descs(target.addr[where], remote_offsets[i], LENGTH, as_array=True), peer, path=path,
                )
                for j in range(POSTS):
                    fill_blocks(local, local_offsets, LENGTH, 100 * i + j)
                    assert b.post(x, f"thread {i} post {j}") in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
                    assert b.wait(x, timeout=20) == ferry.Status.OK
                assert b.release(x) == ferry.Status.OK
                region.close()

            run_threads(poster, THREADS)
            got = target.call("notifs", THREADS * POSTS)
            assert sorted(got) == sorted(
                ("initiator", f"thread {i} post {j}".encode()) for i in range(THREADS) for j in range(POSTS)
            )
            for i in range(THREADS):
                where = "alloc" if i % 2 == 0 else "user"
                # Only this thread's area: the rest of the target's memory belongs to the others.
                verdict = target.call("check_area", where, i * AREA, AREA, remote_offsets[i], LENGTH, 100 * i + POSTS - 1)
                assert verdict is None, f"thread {i}: {verdict}"
    finally:
        target.close()


@pytest.mark.parametrize("tls", TLS)
def test_wait_notifs_lets_other_threads_run(tls):
    target = Target(tls, 1 << 16, progress="thread")
    try:
        with ferry.Backend("initiator", tls=tls, progress="thread") as b:
            peer = b.load(target.blob)
            assert target.call("load", "initiator", b.metadata()) == "ok"
            result = {}
            entered = threading.Event()

            def waiter():
                entered.set()
                result["woke"] = b.wait_notifs(20)

            t = threading.Thread(target=waiter)
            t.start()
            assert entered.wait(10)
            # This thread keeps running while the waiter is blocked: with the
            # GIL held there, it would stall until the wait timed out.
            local = b.allocate(4096)
            np.asarray(local)[:] = 42
            x = b.prepare("write", [local.whole()], [(target.addr["alloc"], 4096, 0)], peer)
            for _ in range(10):
                assert b.post(x) in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
                assert b.wait(x, timeout=20) == ferry.Status.OK
            assert t.is_alive(), "wait_notifs returned with no notification"
            assert target.call("send_notif", "initiator", b"wake up") == ferry.Status.OK
            t.join(30)
            assert not t.is_alive()
            assert result["woke"] is True
            assert b.take_notifs() == {"target": [b"wake up"]}
    finally:
        target.close()


def test_wait_lets_other_threads_run(target):
    with ferry.Backend("initiator", tls=target.tls, progress="thread") as b:
        peer = b.load(target.blob)
        local = np.zeros(60 * 16384, dtype=np.uint8)
        region = b.register(local)
        offsets = scattered(60, 16384, 64)
        x = b.prepare(
            "write", [region.slice(k * 16384, 16384) for k in range(60)],
            [(target.addr["user"] + off, 16384, 0) for off in offsets], peer, path="ucx",
        )
        fill_blocks(local, [k * 16384 for k in range(60)], 16384, 9)
        assert target.call("stall") == "stalled"
        assert b.post(x) == ferry.Status.IN_PROGRESS
        result = {}
        entered = threading.Event()

        def waiter():
            entered.set()
            result["status"] = b.wait(x, timeout=20)

        t = threading.Thread(target=waiter)
        t.start()
        assert entered.wait(10)
        # The transfer completes only once this thread tells the target to
        # progress, which it can do only if the waiting thread let the GIL go.
        target.side.send("resume")
        target.side.expect("resumed")
        t.join(30)
        assert result["status"] == ferry.Status.OK
        assert target.call("check", "user", offsets, 16384, 9) is None
        assert b.release(x) == ferry.Status.OK


def test_inline_backend_refuses_other_threads():
    with ferry.Backend("owner") as b:
        caught = {}

        def other():
            for name, call in [("progress", b.progress), ("metadata", b.metadata), ("poll_notifs", b.poll_notifs),
                               ("allocate", lambda: b.allocate(4096))]:
                try:
                    call()
                except ferry.Error as e:
                    caught[name] = e

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert sorted(caught) == ["allocate", "metadata", "poll_notifs", "progress"]
        for name, e in caught.items():
            assert type(e) is ferry.InvalidArgumentError
            assert e.status == ferry.Status.INVALID_ARGUMENT
            assert f"{name}: this backend (progress='inline') belongs to the thread that created it" in str(e)
        # Still whole on its own thread.
        assert b.progress() >= 0
        assert b.metadata()
