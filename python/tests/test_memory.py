"""register() of the buffer protocol, DLPack and __cuda_array_interface__; regions and backends as context managers."""

import mmap

import numpy as np
import pytest

import ferry
from twoproc import FILL, check_blocks, descs, fill_blocks, scattered


class DLPackOnly:
    """Exposes an array through DLPack alone (numpy arrays also have the buffer protocol, which register prefers)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, stream=None):
        return self._array.__dlpack__()

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class CudaArrayInterface:
    """Claims device memory (the pointer is a host array's: it must be refused before anyone touches it)."""

    def __init__(self, array):
        self._array = array
        self.__cuda_array_interface__ = {
            "data": (array.ctypes.data, False), "shape": array.shape, "typestr": "|u1", "version": 3,
        }


def test_register_through_dlpack():
    array = np.arange(4096, dtype=np.uint32)
    with ferry.Backend("dlpack") as b:
        with b.register(DLPackOnly(array)) as r:
            assert (r.addr, r.size, r.dev) == (array.ctypes.data, array.nbytes, 0)
            view = np.asarray(r)
            assert view.dtype == np.uint8 and view.size == array.nbytes
            assert np.shares_memory(view, array)
            view[:4] = [1, 2, 3, 4]
            assert array[0] == 0x04030201
            del view
        assert r.closed


def test_write_from_a_dlpack_region(target):
    length, offsets = 512, scattered(10, 512, 100)
    array = np.full(10 * 612, FILL, dtype=np.uint8)
    fill_blocks(array, offsets, length, 8)
    with ferry.Backend("initiator", tls=target.tls) as b:
        peer = b.load(target.blob)
        region = b.register(DLPackOnly(array))
        assert target.call("reset", "alloc") == "ok"
        remote_offsets = scattered(10, 512, 3000)
        x = b.prepare("write", descs(region.addr, offsets, length), descs(target.addr["alloc"], remote_offsets, length), peer)
        assert b.post(x) in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
        assert b.wait(x, timeout=20) == ferry.Status.OK
        assert target.call("check", "alloc", remote_offsets, length, 8, backend=b) is None
        # READ back into the DLPack-registered array, over what was there.
        array[:] = FILL
        x = b.prepare("read", descs(region.addr, offsets, length), descs(target.addr["alloc"], remote_offsets, length), peer)
        assert b.post(x) in (ferry.Status.OK, ferry.Status.IN_PROGRESS)
        assert b.wait(x, timeout=20) == ferry.Status.OK
        check_blocks(array, offsets, length, 8, FILL)


def test_cuda_array_interface_on_a_host_backend():
    with ferry.Backend("host") as b:
        with pytest.raises(ferry.InvalidArgumentError, match="memory='cuda'") as e:
            b.register(CudaArrayInterface(np.zeros(256, dtype=np.uint8)))
        assert "register: this is CUDA device memory" in str(e.value)


@pytest.mark.parametrize(
    "obj, fragment",
    [
        (b"immutable bytes", "the buffer is read-only"),
        (np.frombuffer(b"\x00" * 64, dtype=np.uint8), "the buffer is read-only"),
        (np.zeros((8, 8), dtype=np.uint8)[:, ::2], "the buffer is not C-contiguous"),
        (np.zeros(0, dtype=np.uint8), "the buffer is empty"),
        (12345, "expected an object with the buffer protocol, __cuda_array_interface__ or __dlpack__"),
    ],
)
def test_register_refuses(obj, fragment):
    with ferry.Backend("refuses") as b:
        with pytest.raises(ferry.InvalidArgumentError) as e:
            b.register(obj)
        assert type(e.value) is ferry.InvalidArgumentError
        assert str(e.value).startswith("register: ") and fragment in str(e.value), str(e.value)


def test_register_bytearray_and_mmap_and_keep_them_alive():
    with ferry.Backend("keeps") as b:
        r1 = b.register(bytearray(b"abc" * 100))
        m = mmap.mmap(-1, 8192)
        r2 = b.register(m)
        array = np.arange(1000, dtype=np.uint16)
        r3 = b.register(array)
        del array  # the region holds it
        assert bytes(memoryview(r1)[:6]) == b"abcabc"
        assert np.array_equal(np.asarray(r3).view(np.uint16), np.arange(1000, dtype=np.uint16))
        assert r2.size == 8192
        # mmap cannot close while a registration exports its buffer.
        with pytest.raises(BufferError):
            m.close()
        r2.close()
        m.close()
        for r in (r1, r3):
            r.close()
            assert r.closed


def test_region_views_slices_and_close():
    with ferry.Backend("views") as b:
        r = b.allocate(10000)
        assert r.size == 10000 and r.dev == 0 and not r.closed
        assert r.whole() == (r.addr, 10000, 0)
        assert r.slice(100, 50) == (r.addr + 100, 50, 0)
        with pytest.raises(ferry.InvalidArgumentError, match=r"region::slice: \[9990, \+20\) leaves a region of 10000 bytes"):
            r.slice(9990, 20)
        mv = memoryview(r)
        assert mv.nbytes == 10000 and not mv.readonly and mv.format == "B"
        mv[:3] = b"xyz"
        assert bytes(np.asarray(r)[:3]) == b"xyz"
        # A live view would outlive the memory: close waits for none, it refuses.
        with pytest.raises(ferry.BusyError, match=r"Region.close: 1 memoryview or numpy view\(s\) of it are alive"):
            r.close()
        assert not r.closed
        mv.release()
        r.close()
        r.close()  # a second close does nothing
        assert r.closed
        with pytest.raises(ferry.InvalidArgumentError, match="the region is closed"):
            memoryview(r)


def test_backend_context_manager_closes():
    with ferry.Backend("scoped", progress="thread") as b:
        assert b.name == "scoped"
        assert b.progress_mode == "thread" and b.memory_kind == "host"
        region = b.allocate(4096)
    with pytest.raises(ferry.InvalidArgumentError, match="metadata: the backend is closed"):
        b.metadata()
    # A region outliving its backend closes without raising.
    region.close()
    assert region.closed
