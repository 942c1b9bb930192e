"""WRITE and READ of scattered descriptor lists between two processes."""

import numpy as np
import pytest

import ferry
from twoproc import FILL, check_blocks, descs, fill_blocks, scattered

BLOCKS = 16
LENGTH = 1000  # not a multiple of anything a transport might round to
LOCAL_SIZE = 64 * 1024

# Local blocks packed with small gaps; remote blocks further apart and in
# reverse order, so that a block landing at another block's place shows.
LOCAL_OFFSETS = scattered(BLOCKS, LENGTH, 24, start=8)
REMOTE_OFFSETS = scattered(BLOCKS, LENGTH, 3000, start=4096)[::-1]

FORMS = ("tuples", "numpy3", "numpy2")


def desc_list(base, offsets, form):
    if form == "tuples":
        return descs(base, offsets, LENGTH)
    rows = descs(base, offsets, LENGTH, as_array=True)
    return rows if form == "numpy3" else np.ascontiguousarray(rows[:, :2]).astype(np.int64)


class Local:
    """Host memory of the initiator, from register() of a numpy array or from allocate()."""

    def __init__(self, b, kind):
        if kind == "register":
            self.array = np.full(LOCAL_SIZE, FILL, dtype=np.uint8)
            self.region = b.register(self.array)
        else:
            self.region = b.allocate(LOCAL_SIZE)
            self.array = np.asarray(self.region)
            self.array[:] = FILL


@pytest.fixture
def initiator(target):
    with ferry.Backend("initiator", tls=target.tls) as b:
        peer = b.load(target.blob)
        assert b.connect(peer, timeout=10) == ferry.Status.OK
        yield b, peer


def finish(b, x, notif=None):
    st = b.post(x, notif)
    assert st in (ferry.Status.OK, ferry.Status.IN_PROGRESS), st
    assert b.wait(x, timeout=20) == ferry.Status.OK


def expected_path(path, remote_mem):
    # Allocated memory of a peer on this host is mapped and copied into;
    # registered user memory may go through process_vm or UCX.
    if path == "ucx":
        return {"ucx"}
    return {"host_ipc"} if remote_mem == "alloc" else {"host_ipc", "ucx"}


@pytest.mark.parametrize("path", ["auto", "ucx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("remote_mem", ["user", "alloc"])
@pytest.mark.parametrize("local_mem", ["register", "allocate"])
def test_write_scattered(target, initiator, local_mem, remote_mem, form, path):
    b, peer = initiator
    local = Local(b, local_mem)
    assert target.call("reset", remote_mem) == "ok"
    seed = 7
    fill_blocks(local.array, LOCAL_OFFSETS, LENGTH, seed)
    x = b.prepare(
        "write",
        desc_list(local.region.addr, LOCAL_OFFSETS, form),
        desc_list(target.addr[remote_mem], REMOTE_OFFSETS, form),
        peer,
        path=path,
    )
    assert b.path_of(x) in expected_path(path, remote_mem)
    assert b.blocks_of(x) == BLOCKS
    finish(b, x)
    assert target.call("check", remote_mem, REMOTE_OFFSETS, LENGTH, seed, backend=b) is None
    assert b.release(x) == ferry.Status.OK
    local.array = None  # a view of allocated memory keeps the region from closing
    local.region.close()


@pytest.mark.parametrize("path", ["auto", "ucx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("remote_mem", ["user", "alloc"])
@pytest.mark.parametrize("local_mem", ["register", "allocate"])
def test_read_scattered(target, initiator, local_mem, remote_mem, form, path):
    b, peer = initiator
    local = Local(b, local_mem)
    seed = 11
    assert target.call("fill", remote_mem, REMOTE_OFFSETS, LENGTH, seed) == "ok"
    x = b.prepare(
        ferry.READ,
        desc_list(local.region.addr, LOCAL_OFFSETS, form),
        desc_list(target.addr[remote_mem], REMOTE_OFFSETS, form),
        peer,
        path=path,
    )
    assert b.path_of(x) in expected_path(path, remote_mem)
    finish(b, x)
    # Block k of the remote list lands at block k of the local list.
    check_blocks(local.array, LOCAL_OFFSETS, LENGTH, seed, FILL)
    assert b.release(x) == ferry.Status.OK


@pytest.mark.parametrize("path", ["auto", "ucx"])
@pytest.mark.parametrize("remote_mem", ["user", "alloc"])
def test_repost_moves_new_data(target, initiator, remote_mem, path):
    b, peer = initiator
    local = Local(b, "register")
    assert target.call("reset", remote_mem) == "ok"
    x = b.prepare(
        ferry.WRITE,
        descs(local.region.addr, LOCAL_OFFSETS, LENGTH),
        descs(target.addr[remote_mem], REMOTE_OFFSETS, LENGTH),
        peer,
        path=path,
    )
    for seed in (21, 22, 23, 24):
        fill_blocks(local.array, LOCAL_OFFSETS, LENGTH, seed)
        finish(b, x)
        assert target.call("check", remote_mem, REMOTE_OFFSETS, LENGTH, seed, backend=b) is None, f"post {seed}"
    assert b.release(x) == ferry.Status.OK


@pytest.mark.parametrize("coalesce", [True, False])
def test_adjacent_blocks_coalesce(target, initiator, coalesce):
    b, peer = initiator
    local = Local(b, "allocate")
    assert target.call("reset", "alloc") == "ok"
    local_offsets = [k * LENGTH for k in range(BLOCKS)]
    remote_offsets = [512 + k * LENGTH for k in range(BLOCKS)]
    fill_blocks(local.array, local_offsets, LENGTH, 5)
    x = b.prepare(
        "WRITE",
        descs(local.region.addr, local_offsets, LENGTH),
        descs(target.addr["alloc"], remote_offsets, LENGTH),
        peer,
        coalesce=coalesce,
    )
    assert b.blocks_of(x) == (1 if coalesce else BLOCKS)
    finish(b, x)
    assert target.call("check", "alloc", remote_offsets, LENGTH, 5, backend=b) is None
