"""ferry.nixl with CUDA torch tensors ("VRAM"): NIXL's two-peer flow between two processes on the GPU, every byte
checked on the host.

Skipped unless the module has CUDA, a GPU is usable and torch sees it.
"""

import time

import numpy as np
import pytest

from ferry.nixl import nixl_agent, nixl_agent_config
from twoproc import FILL, TIMEOUT, check_blocks, fill_blocks, spawn_side

ROWS = 64
LENGTH = 16384
PICKED = [2, 5, 11, 23, 40, 63]  # target rows the WRITE fills; not adjacent, so one descriptor each
SEED = 29


def offsets(rows):
    return [r * LENGTH for r in rows]


def host_copy(tensor):
    """The tensor's bytes, copied to the host, as a flat numpy array."""
    return tensor.cpu().numpy().reshape(-1)


def device_tensor(torch, rows, seed=None, picked=None):
    """A [rows, LENGTH] uint8 CUDA tensor holding FILL, with the rows in `picked` (all if None) patterned by `seed`."""
    host = np.full(rows * LENGTH, FILL, dtype=np.uint8)
    if seed is not None:
        fill_blocks(host, offsets(range(rows) if picked is None else picked), LENGTH, seed)
    return torch.from_numpy(host.reshape(rows, LENGTH)).to("cuda")


@pytest.fixture(scope="module")
def gpu(cuda):
    """torch, where it sees the GPU that the cuda fixture (conftest.py) found usable."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no GPU")
    return torch


def wait_done(agent, handle):
    deadline = time.monotonic() + TIMEOUT
    state = agent.transfer(handle)
    while state == "PROC":
        assert time.monotonic() < deadline, "the transfer never completed"
        state = agent.check_xfer_state(handle)
    assert state == "DONE"


def gpu_target(conn, prog_thread):
    """Two CUDA tensors as one registration: rows of the first are written, the second is read whole."""
    import torch

    agent = nixl_agent("gpu-target", nixl_agent_config(enable_prog_thread=prog_thread))
    into = device_tensor(torch, ROWS)
    source = device_tensor(torch, ROWS, SEED + 1)
    reg = agent.register_memory([into, source])
    assert reg.getType() == "VRAM" and len(reg) == 2
    rows = agent.get_xfer_descs([into[r] for r in PICKED])
    assert rows.getType() == "VRAM"
    conn.send((agent.get_agent_metadata(), agent.get_serialized_descs(rows),
               agent.get_serialized_descs(agent.get_xfer_descs(source))))
    deadline = time.monotonic() + TIMEOUT
    while not agent.check_remote_xfer_done("gpu-initiator", b"rows written", tag_is_prefix=False):
        assert time.monotonic() < deadline, "the WRITE's notification never came"
    check_blocks(host_copy(into), offsets(PICKED), LENGTH, SEED, FILL)
    conn.send("written")
    while not agent.check_remote_xfer_done("gpu-initiator", b"read done", tag_is_prefix=False):
        assert time.monotonic() < deadline, "the READ's notification never came"
    check_blocks(host_copy(source), offsets(range(ROWS)), LENGTH, SEED + 1, FILL)  # a READ leaves it as it was
    assert conn.recv() == "bye"
    agent.deregister_memory(reg)


@pytest.mark.parametrize("prog_thread", [False, True])
def test_cuda_tensors_write_notify_and_read(gpu, prog_thread):
    torch = gpu
    initiator = nixl_agent("gpu-initiator", nixl_agent_config(enable_prog_thread=prog_thread))
    src = device_tensor(torch, len(PICKED), SEED)
    back = device_tensor(torch, ROWS)
    reg = initiator.register_memory([src, back])
    assert reg.getType() == "VRAM"
    target = spawn_side(gpu_target, prog_thread)
    try:
        md, write_side, read_side = target.recv(timeout=120)
        assert initiator.add_remote_agent(md) == "gpu-target"
        initiator.make_connection("gpu-target")

        # WRITE row k of src into target row PICKED[k], with a notification.
        rows = initiator.get_xfer_descs([src[k] for k in range(len(PICKED))])
        assert rows.getType() == "VRAM" and len(rows) == len(PICKED)
        h = initiator.initialize_xfer("WRITE", rows, initiator.deserialize_descs(write_side), "gpu-target",
                                      b"rows written")
        wait_done(initiator, h)
        initiator.release_xfer_handle(h)
        target.expect("written", timeout=60)

        # READ the target's second tensor whole into back.
        h = initiator.initialize_xfer("READ", initiator.get_xfer_descs(back), initiator.deserialize_descs(read_side),
                                      "gpu-target", b"read done")
        wait_done(initiator, h)
        initiator.release_xfer_handle(h)
        check_blocks(host_copy(back), offsets(range(ROWS)), LENGTH, SEED + 1, FILL)
        check_blocks(host_copy(src), offsets(range(len(PICKED))), LENGTH, SEED, FILL)  # the WRITE's source is intact
        target.send("bye")
        target.finish(timeout=60)
        initiator.deregister_memory(reg)
        initiator.remove_remote_agent("gpu-target")
    finally:
        if target.process.is_alive():
            target.kill()
