"""CUDA device memory between two processes: allocate() on both sides, torch tensors, notifications.

Skipped unless the module has CUDA and a GPU is usable.
"""

import numpy as np
import pytest

import ferry
from twoproc import FILL, TIMEOUT, check_blocks, scattered, serve_gpu_target, spawn_side

SIZE = 1 << 21
HALF = SIZE // 2
BLOCKS = 24
LENGTH = 8192
SEED = 17
SOURCE = scattered(BLOCKS, LENGTH, 1000)  # in the upper half of each buffer
DEST = scattered(BLOCKS, LENGTH, 20000)[::-1]  # in the lower half, reversed


def device_buffer(b, kind):
    """SIZE bytes of device memory on `b`: from allocate(), or a torch tensor through __cuda_array_interface__."""
    if kind == "allocate":
        return b.allocate(SIZE), None
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    tensor = torch.empty(SIZE, dtype=torch.uint8, device="cuda")
    assert hasattr(tensor, "__cuda_array_interface__")
    return b.register(tensor), tensor


def done(b, x, notif=None):
    assert b.post(x, notif) in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
    assert b.wait(x, timeout=TIMEOUT) == ferry.Status.OK


@pytest.mark.parametrize("progress", ["inline", "thread"])
@pytest.mark.parametrize("kind", ["allocate", "torch"])
def test_device_write_with_notification_and_read_back(cuda, kind, progress):
    with ferry.Backend("gpu-initiator", memory="cuda", progress=progress) as b:
        local, tensor = device_buffer(b, kind)
        staging = b.allocate_host(SIZE)
        host = np.asarray(staging)
        host[:] = 0
        target = spawn_side(serve_gpu_target, progress, SIZE)
        try:
            target.send((SOURCE, LENGTH, SEED))
            blob, regions = target.recv()
            peer = b.load(blob)
            t_addr, t_len, t_dev = regions["device"]
            p_addr, _, _ = regions["pinned"]
            assert t_len == SIZE

            # The target's pinned memory into our device memory: FILL below, blocks above.
            done(b, b.prepare("read", [local.whole()], [(p_addr, SIZE, 0)], peer))
            if tensor is not None:
                check_blocks(tensor.cpu().numpy()[HALF:], SOURCE, LENGTH, SEED, FILL)
            # Device to device: FILL over the target's lower half, then the scattered blocks.
            done(b, b.prepare("write", [local.slice(0, HALF)], [(t_addr, HALF, t_dev)], peer))
            x = b.prepare(
                "write",
                [local.slice(HALF + off, LENGTH) for off in SOURCE],
                np.array([(t_addr + off, LENGTH, t_dev) for off in DEST], dtype=np.uint64),
                peer,
            )
            assert b.path_of(x) == "cuda_ipc"
            done(b, x, b"kv blocks\x00ready")
            target.send(("notifs", 1))
            assert target.recv(backend=b if progress == "inline" else None) == [("gpu-initiator", b"kv blocks\x00ready")]

            # Back out through page-locked host memory, where numpy sees it.
            done(b, b.prepare("read", [staging.slice(0, HALF)], [(t_addr, HALF, t_dev)], peer))
            check_blocks(host[:HALF], DEST, LENGTH, SEED, FILL)
            # And a scattered READ from device memory into pinned memory.
            host[:] = FILL
            done(b, b.prepare("read", [staging.slice(HALF + off, LENGTH) for off in SOURCE],
                              [(t_addr + off, LENGTH, t_dev) for off in DEST], peer))
            check_blocks(host[HALF:], SOURCE, LENGTH, SEED, FILL)
            assert np.all(host[:HALF] == FILL)

            target.send(("bye",))
            target.finish(backend=b if progress == "inline" else None)
        finally:
            if target.process.is_alive():
                target.kill()
        local.close()
        host = None  # the view goes before the memory it shows
        staging.close()


def test_device_region_has_no_host_view(cuda):
    with ferry.Backend("gpu-view", memory="cuda") as b:
        with b.allocate(4096) as r:
            assert r.size == 4096
            with pytest.raises(ferry.InvalidArgumentError, match="CUDA device memory, which has no host view"):
                memoryview(r)
