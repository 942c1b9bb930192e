"""Notifications: with a WRITE (after its data), standalone, grouped by sender."""

import time

import numpy as np
import pytest

import ferry
from twoproc import descs, fill_blocks, scattered

LENGTH = 4096
OFFSETS = scattered(32, LENGTH, 512)


@pytest.fixture
def initiator(target):
    with ferry.Backend("initiator", tls=target.tls) as b:
        yield b, b.load(target.blob)


def take_until(b, count, timeout=20.0):
    """Merges take_notifs() results until `count` notifications arrived."""
    merged = {}
    deadline = time.monotonic() + timeout
    while sum(map(len, merged.values())) < count and time.monotonic() < deadline:
        b.wait_notifs(0.05)
        taken = b.take_notifs()
        for sender, msgs in taken.items():
            assert isinstance(sender, str) and all(isinstance(m, bytes) for m in msgs)
            merged.setdefault(sender, []).extend(msgs)
    return merged


@pytest.mark.parametrize("path", ["auto", "ucx"])
@pytest.mark.parametrize("remote_mem", ["user", "alloc"])
def test_notification_arrives_after_its_write(target, initiator, remote_mem, path):
    b, peer = initiator
    local = np.zeros(len(OFFSETS) * LENGTH, dtype=np.uint8)
    region = b.register(local)
    local_offsets = [k * LENGTH for k in range(len(OFFSETS))]
    fill_blocks(local, local_offsets, LENGTH, 3)
    assert target.call("reset", remote_mem) == "ok"
    x = b.prepare(
        "write", descs(region.addr, local_offsets, LENGTH), descs(target.addr[remote_mem], OFFSETS, LENGTH), peer,
        path=path,
    )
    notif = b"layer 3\x00ready\xff"
    target.side.send(("watch", remote_mem, OFFSETS, LENGTH, 3, 1))
    target.side.expect("watching")
    assert b.post(x, notif) in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
    assert b.wait(x, timeout=20) == ferry.Status.OK
    got, verdict = target.side.recv(backend=b)
    assert got == [("initiator", notif)]
    assert verdict is None, f"the notification arrived before its data: {verdict}"


def test_send_notif_bytes_str_and_bytearray(target, initiator):
    b, peer = initiator
    messages = [b"\x00", b"a\x00b\x00\x00", "grüße, layer ✓", bytearray(b"\x00\x01\x02" * 100), b"x" * 4000]
    for m in messages:
        assert b.send_notif(peer, m) == ferry.Status.OK
    got = target.call("notifs", len(messages), backend=b)
    want = [m.encode() if isinstance(m, str) else bytes(m) for m in messages]
    assert sorted(got) == sorted(("initiator", m) for m in want)


def test_notification_over_the_limit_is_refused(target):
    with ferry.Backend("initiator", tls=target.tls, max_notif_size=64) as b:
        peer = b.load(target.blob)
        assert b.send_notif(peer, b"y" * 65) == ferry.Status.INVALID_ARGUMENT
        assert b.send_notif(peer, b"y" * 64) == ferry.Status.OK
        assert target.call("notifs", 1, backend=b) == [("initiator", b"y" * 64)]


def test_take_notifs_groups_by_sender(target):
    with ferry.Backend("receiver", tls=target.tls) as b, ferry.Backend("second", tls=target.tls) as second:
        assert target.call("load", "receiver", b.metadata()) == "ok"
        to_b = second.load(b.metadata())
        for i in range(3):
            assert target.call("send_notif", "receiver", f"from target {i}\x00") == ferry.Status.OK
            assert second.send_notif(to_b, b"from second %d" % i) == ferry.Status.OK
        # `second` lives on this thread too: its sends leave as it progresses.
        deadline = time.monotonic() + 20
        merged = {}
        while sum(map(len, merged.values())) < 6 and time.monotonic() < deadline:
            second.progress()
            for sender, msgs in b.take_notifs().items():
                merged.setdefault(sender, []).extend(msgs)
        assert {k: sorted(v) for k, v in merged.items()} == {
            "target": [b"from target %d\x00" % i for i in range(3)],
            "second": [b"from second %d" % i for i in range(3)],
        }
        assert b.take_notifs() == {}
        assert b.poll_notifs() == []
        assert b.wait_notifs(0.01) is False
        assert b.dropped_notifs == 0
