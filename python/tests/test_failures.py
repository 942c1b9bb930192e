"""A target killed with SIGKILL: transfers end PEER_FAILED, nothing hangs."""

import signal
import time

import numpy as np
import pytest

import ferry
from twoproc import TLS, Target, scattered

BLOCKS = 60
LENGTH = 16 * 1024
REMOTE_OFFSETS = scattered(BLOCKS, LENGTH, 64)


@pytest.mark.parametrize("progress", ["inline", "thread"])
@pytest.mark.parametrize("tls", TLS)
def test_killed_target_fails_transfers(tls, progress):
    target = Target(tls, 1 << 20)
    try:
        with ferry.Backend("initiator", tls=tls, progress=progress) as b:
            peer = b.load(target.blob)
            local = np.zeros(BLOCKS * LENGTH, dtype=np.uint8)
            region = b.register(local)
            local_descs = [region.slice(k * LENGTH, LENGTH) for k in range(BLOCKS)]
            stuck = b.prepare(
                "write", local_descs, [(target.addr["user"] + off, LENGTH, 0) for off in REMOTE_OFFSETS], peer,
                path="ucx",
            )
            later = b.prepare("write", [region.slice(0, 4096)], [(target.addr["alloc"], 4096, 0)], peer)
            assert b.post(later) in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
            assert b.wait(later, timeout=20) == ferry.Status.OK

            assert target.call("stall") == "stalled"
            assert b.post(stuck, b"never") == ferry.Status.IN_PROGRESS
            target.side.kill()
            assert target.side.process.exitcode == -signal.SIGKILL

            assert b.wait(stuck, timeout=15) == ferry.Status.PEER_FAILED
            deadline = time.monotonic() + 15
            while b.peer_status(peer) != ferry.Status.PEER_FAILED and time.monotonic() < deadline:
                b.wait_notifs(0.01)
            assert b.peer_status(peer) == ferry.Status.PEER_FAILED
            # Posted after the failure: refused at once, or ended by the deadline.
            st = b.post(later, b"after", timeout=5)
            if st == ferry.Status.IN_PROGRESS:
                st = b.wait(later, timeout=15)
            assert st == ferry.Status.PEER_FAILED
            assert b.send_notif(peer, b"anyone?") == ferry.Status.PEER_FAILED
            assert b.release(stuck) == ferry.Status.OK
            b.unload(peer)
    finally:
        if target.side.process.is_alive():
            target.side.kill()
