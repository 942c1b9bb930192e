"""NIXL's two-peer flow with torch tensors through ferry.nixl, on the CPU ("DRAM") or the GPU ("VRAM"): two
[ROWS, LENGTH] uint8 tensors registered as a list on each side, rows WRITTEN with a notification, a whole tensor READ
back, every byte and the untouched ones checked on the host. test_nixl.py runs it on the CPU, test_nixl_gpu.py on the
GPU.
"""

import time

import numpy as np
import pytest

from ferry.nixl import nixl_agent, nixl_agent_config, nixlInvalidParamError
from twoproc import FILL, TIMEOUT, check_blocks, fill_blocks, spawn_side

ROWS = 32
LENGTH = 16384
PICKED = [1, 4, 9, 17, 30]  # target rows the WRITE fills; not adjacent, so one descriptor each
SEED = 29


def offsets(rows):
    return [r * LENGTH for r in rows]


def mem_type(device):
    return "VRAM" if device == "cuda" else "DRAM"


def make_tensor(torch, device, rows, seed=None):
    """A [rows, LENGTH] uint8 tensor on `device` holding FILL, every row patterned by `seed` if given."""
    host = np.full(rows * LENGTH, FILL, dtype=np.uint8)
    if seed is not None:
        fill_blocks(host, offsets(range(rows)), LENGTH, seed)
    return torch.from_numpy(host.reshape(rows, LENGTH)).to(device)


def host_bytes(tensor):
    """The tensor's bytes, on the host, as a flat numpy array."""
    return tensor.cpu().numpy().reshape(-1)


def wait_done(agent, handle):
    deadline = time.monotonic() + TIMEOUT
    state = agent.transfer(handle)
    while state == "PROC":
        assert time.monotonic() < deadline, "the transfer never completed"
        state = agent.check_xfer_state(handle)
    assert state == "DONE"


def target(conn, prog_thread, device):
    """Registers two tensors as one list: rows of the first are written, the second is read whole."""
    import torch

    agent = nixl_agent("torch-target", nixl_agent_config(enable_prog_thread=prog_thread))
    into = make_tensor(torch, device, ROWS)
    source = make_tensor(torch, device, ROWS, SEED + 1)
    reg = agent.register_memory([into, source])
    assert reg.getType() == mem_type(device) and len(reg) == 2
    rows = agent.get_xfer_descs([into[r] for r in PICKED])
    conn.send((agent.get_agent_metadata(), agent.get_serialized_descs(rows),
               agent.get_serialized_descs(agent.get_xfer_descs(source))))
    deadline = time.monotonic() + TIMEOUT
    while not agent.check_remote_xfer_done("torch-initiator", b"rows written", tag_is_prefix=False):
        assert time.monotonic() < deadline, "the WRITE's notification never came"
    check_blocks(host_bytes(into), offsets(PICKED), LENGTH, SEED, FILL)
    conn.send("written")
    while not agent.check_remote_xfer_done("torch-initiator", b"read done", tag_is_prefix=False):
        assert time.monotonic() < deadline, "the READ's notification never came"
    check_blocks(host_bytes(source), offsets(range(ROWS)), LENGTH, SEED + 1, FILL)  # a READ leaves it as it was
    assert conn.recv() == "bye"
    agent.deregister_memory(reg)


def run(torch, prog_thread, device):
    """The initiator's side, with the target in a spawned process."""
    initiator = nixl_agent("torch-initiator", nixl_agent_config(enable_prog_thread=prog_thread))
    src = make_tensor(torch, device, len(PICKED), SEED)
    back = make_tensor(torch, device, ROWS)
    reg = initiator.register_memory([src, back])
    assert reg.getType() == mem_type(device)
    with pytest.raises(nixlInvalidParamError, match="must be contiguous"):
        initiator.get_xfer_descs(back[:, :8])
    peer = spawn_side(target, prog_thread, device)
    try:
        md, write_side, read_side = peer.recv(timeout=120)
        assert initiator.add_remote_agent(md) == "torch-target"
        initiator.make_connection("torch-target")

        # WRITE row k of src into target row PICKED[k], with a notification.
        rows = initiator.get_xfer_descs([src[k] for k in range(len(PICKED))])
        assert rows.getType() == mem_type(device) and len(rows) == len(PICKED)
        assert rows.rows[:, 0].tolist() == [src[k].data_ptr() for k in range(len(PICKED))]
        h = initiator.initialize_xfer("WRITE", rows, initiator.deserialize_descs(write_side), "torch-target",
                                      b"rows written")
        wait_done(initiator, h)
        initiator.release_xfer_handle(h)
        peer.expect("written", timeout=60)

        # READ the target's second tensor whole into back.
        h = initiator.initialize_xfer("READ", initiator.get_xfer_descs(back), initiator.deserialize_descs(read_side),
                                      "torch-target", b"read done")
        wait_done(initiator, h)
        initiator.release_xfer_handle(h)
        check_blocks(host_bytes(back), offsets(range(ROWS)), LENGTH, SEED + 1, FILL)
        check_blocks(host_bytes(src), offsets(range(len(PICKED))), LENGTH, SEED, FILL)  # the WRITE's source is intact
        peer.send("bye")
        peer.finish(timeout=60)
        initiator.deregister_memory(reg)
        initiator.remove_remote_agent("torch-target")
    finally:
        if peer.process.is_alive():
            peer.kill()
