"""A transfer held in flight: reposts answer BUSY, its region refuses to close."""

import numpy as np

import ferry
from twoproc import FILL, fill_blocks, scattered

BLOCKS = 60
LENGTH = 16 * 1024
REMOTE_OFFSETS = scattered(BLOCKS, LENGTH, 64)


def test_post_in_flight_is_busy_and_region_refuses_to_close(target):
    with ferry.Backend("initiator", tls=target.tls) as b:
        peer = b.load(target.blob)
        local = np.full(BLOCKS * LENGTH, FILL, dtype=np.uint8)
        region = b.register(local)
        local_offsets = [k * LENGTH for k in range(BLOCKS)]
        assert target.call("reset", "user") == "ok"
        # UCX-emulated RMA into registered memory of a target that does not
        # progress cannot complete: the WRITE stays in flight until it does.
        x = b.prepare(
            "write",
            [region.slice(off, LENGTH) for off in local_offsets],
            [(target.addr["user"] + off, LENGTH, 0) for off in REMOTE_OFFSETS],
            peer,
            path="ucx",
        )
        fill_blocks(local, local_offsets, LENGTH, 1)
        assert target.call("stall") == "stalled"
        assert b.post(x, b"first") == ferry.Status.IN_PROGRESS
        for _ in range(200):
            assert b.check(x) == ferry.Status.IN_PROGRESS
        assert b.post(x) == ferry.Status.BUSY
        assert b.post(x, b"refused") == ferry.Status.BUSY
        assert b.wait(x, timeout=0) == ferry.Status.IN_PROGRESS
        try:
            region.close()
        except ferry.BusyError as e:
            assert e.status == ferry.Status.BUSY
            assert "transfer" in str(e), str(e)
        else:
            raise AssertionError("Region.close of a region in flight did not raise BusyError")
        assert not region.closed
        target.side.send("resume")
        target.side.expect("resumed", backend=b)
        assert b.wait(x, timeout=20) == ferry.Status.OK
        assert target.call("check", "user", REMOTE_OFFSETS, LENGTH, 1, backend=b) is None

        fill_blocks(local, local_offsets, LENGTH, 2)
        assert b.post(x, b"second") in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
        assert b.wait(x, timeout=20) == ferry.Status.OK
        assert target.call("check", "user", REMOTE_OFFSETS, LENGTH, 2, backend=b) is None
        # Exactly the two notifications: the refused posts sent none.
        got = target.call("notifs", 3, 1.0, backend=b)
        assert got == [("initiator", b"first"), ("initiator", b"second")]
        assert b.release(x) == ferry.Status.OK
        region.close()
        assert region.closed
