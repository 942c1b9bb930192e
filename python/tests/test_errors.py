"""Validation errors surface as the ferry.Error subclass of their status, with ferry's message."""

import numpy as np
import pytest

import ferry


@pytest.fixture
def setup(target):
    with ferry.Backend("initiator", tls=target.tls) as b:
        local = np.zeros(8192, dtype=np.uint8)
        region = b.register(local)
        yield b, b.load(target.blob), region, target.addr["user"]


STATUS_OF = {
    ferry.InvalidArgumentError: ferry.Status.INVALID_ARGUMENT,
    ferry.NotRegisteredError: ferry.Status.NOT_REGISTERED,
    ferry.NoSuchPeerError: ferry.Status.NO_SUCH_PEER,
}


def raises(cls, *fragments):
    """Asserts the exact class (not a sibling) and parts of the message."""

    class Check:
        def __enter__(self):
            return self

        def __exit__(self, kind, value, tb):
            assert kind is cls, f"expected {cls.__name__}, got {kind.__name__ if kind else 'no exception'}: {value}"
            assert isinstance(value, ferry.Error) and isinstance(value, RuntimeError)
            assert value.status == STATUS_OF[cls] and value.ucx_status == 0
            for f in fragments:
                assert f in str(value), f"{f!r} not in {str(value)!r}"
            return True

    return Check()


def test_local_descriptor_outside_registered_memory(setup):
    b, peer, region, remote = setup
    with raises(ferry.NotRegisteredError, "descriptor 0: local block", "not inside any registered region"):
        b.prepare("write", [(region.addr + 8192, 16, 0)], [(remote, 16, 0)], peer)
    good = [(region.addr + 64 * i, 64, 0) for i in range(4)]
    bad = good[:2] + [(region.addr + 8190, 4, 0)] + good[3:]
    with raises(ferry.NotRegisteredError, "descriptor 2: local block"):
        b.prepare("write", np.array(bad, dtype=np.uint64), [(remote + 100 * i, 4 if i == 2 else 64, 0) for i in range(4)], peer)


def test_remote_descriptor_outside_published_memory(setup, target):
    b, peer, region, remote = setup
    with raises(ferry.NotRegisteredError, "descriptor 1: remote block", "peer 'target' published"):
        b.prepare("read", [region.slice(0, 16), region.slice(16, 16)], [(remote, 16, 0), (remote + target.size, 16, 0)], peer)


def test_mismatched_lists(setup):
    b, peer, region, remote = setup
    with raises(ferry.InvalidArgumentError, "1 local descriptors but 2 remote descriptors"):
        b.prepare("write", [region.slice(0, 16)], [(remote, 16, 0), (remote + 16, 16, 0)], peer)
    with raises(ferry.InvalidArgumentError, "descriptor 0", "length"):
        b.prepare("write", [region.slice(0, 16)], [(remote, 8, 0)], peer)


@pytest.mark.parametrize(
    "local, fragments",
    [
        (np.zeros((2, 4), dtype=np.uint64), ("prepare: local:", "shape (N, 3)")),
        (np.zeros(6, dtype=np.uint64), ("prepare: local:", "shape (N, 3)")),
        (np.zeros((2, 3), dtype=np.float64), ("prepare: local:", "must hold integers, not dtype float64")),
        ([(1, 2, 3, 4)], ("prepare: local[0]:", "got 4 items")),
        ([(1, 2, 0), "abc"], ("prepare: local[1]:", "expected a tuple")),
        ([(-1, 16, 0)], ("prepare: local[0]:", "non-negative integers")),
        ("abc", ("prepare: local:", "expected a list")),
    ],
)
def test_bad_descriptor_lists(setup, local, fragments):
    b, peer, region, remote = setup
    with raises(ferry.InvalidArgumentError, *fragments):
        b.prepare("write", local, [(remote, 16, 0)], peer)


def test_bad_op_and_path(setup):
    b, peer, region, remote = setup
    args = ([region.slice(0, 16)], [(remote, 16, 0)], peer)
    with raises(ferry.InvalidArgumentError, "op must be 'read' or 'write'", "got 'writ'"):
        b.prepare("writ", *args)
    with raises(ferry.InvalidArgumentError, "op must be 'read' or 'write'"):
        b.prepare(1, *args)
    with raises(ferry.InvalidArgumentError, "path must be 'auto', 'ucx'", "got 'fast'"):
        b.prepare("write", *args, path="fast")


def test_unknown_and_unloaded_peer(setup):
    b, peer, region, remote = setup
    assert b.find_peer("nobody") is None
    assert b.find_peer("target") == peer
    x = b.prepare("write", [region.slice(0, 16)], [(remote, 16, 0)], peer)
    assert b.post(x) in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
    assert b.wait(x, timeout=20) == ferry.Status.OK
    b.unload(peer)
    assert b.find_peer("target") is None
    assert b.peer_status(peer) == ferry.Status.NO_SUCH_PEER
    assert b.post(x) == ferry.Status.NO_SUCH_PEER
    assert b.send_notif(peer, b"hello") == ferry.Status.NO_SUCH_PEER
    with raises(ferry.NoSuchPeerError, "prepare: the peer handle is unknown or was unloaded"):
        b.prepare("write", [region.slice(0, 16)], [(remote, 16, 0)], peer)
    with raises(ferry.NoSuchPeerError):
        b.remote_regions(peer)


def test_bad_metadata_is_refused(target):
    with ferry.Backend("initiator", tls=target.tls) as b:
        blob = target.blob
        with raises(ferry.InvalidArgumentError, "metadata: total length at offset 8", "truncated"):
            b.load(blob[:40])
        with raises(ferry.InvalidArgumentError, "metadata: magic at offset 0", "not a ferry metadata blob"):
            b.load(b"garbage!" * 40)
        # Every cut and every flipped byte is refused, never a crash.
        for n in range(len(blob)):
            with pytest.raises(ferry.InvalidArgumentError):
                b.load(blob[:n])
        for i in range(len(blob)):
            broken = bytearray(blob)
            broken[i] ^= 0x5A
            with pytest.raises(ferry.InvalidArgumentError):
                b.load(bytes(broken))
        with raises(ferry.InvalidArgumentError, "checksum at offset 12", "corrupted"):
            b.load(blob[:-1] + bytes([blob[-1] ^ 1]))
        assert b.find_peer("target") is None
        assert b.peer_status(b.load(blob)) == ferry.Status.OK


def test_backend_arguments():
    with raises(ferry.InvalidArgumentError, "Backend: unknown setting 'colour'"):
        ferry.Backend("x", colour="red")
    with raises(ferry.InvalidArgumentError, "progress must be 'inline' or 'thread'", "'eager'"):
        ferry.Backend("x", progress="eager")
    with raises(ferry.InvalidArgumentError, "memory must be 'host' or 'cuda'"):
        ferry.Backend("x", memory="disk")
    with raises(ferry.InvalidArgumentError, "error_handling must be 'peer' or 'none'"):
        ferry.Backend("x", error_handling="some")
    with raises(ferry.InvalidArgumentError, "xfer_timeout: must be a number of seconds >= 0"):
        ferry.Backend("x", xfer_timeout=-1)
    with raises(ferry.InvalidArgumentError, "name must be 1 to 255 bytes, got 256"):
        ferry.Backend("n" * 256)


def test_closed_backend_raises():
    b = ferry.Backend("closing")
    region = b.allocate(4096)
    b.close()
    with raises(ferry.InvalidArgumentError, "metadata: the backend is closed"):
        b.metadata()
    with raises(ferry.InvalidArgumentError, "progress: the backend is closed"):
        b.progress()
    region.close()
    assert region.closed
    b.close()


def test_error_classes():
    classes = [
        ferry.InvalidArgumentError, ferry.NotRegisteredError, ferry.NoSuchPeerError, ferry.BusyError,
        ferry.CanceledError, ferry.PeerFailedError, ferry.UcxError, ferry.TimedOutError, ferry.NoMemoryError,
        ferry.DeviceError,
    ]
    assert len(set(classes)) == 10
    for cls in classes:
        assert issubclass(cls, ferry.Error) and cls.__module__ == "ferry"
    assert issubclass(ferry.Error, RuntimeError)
