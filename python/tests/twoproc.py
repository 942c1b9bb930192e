"""Two real processes for the ferry tests.

The test process is one side; `spawn_side` starts the other in a fresh
interpreter (spawn: a process that created a backend must never fork),
hands it one end of a pipe for the protocol, and `Side.finish` joins it and
raises the child's traceback if it failed. Everything blocking is bounded,
so a broken peer fails the test instead of hanging it.
"""

import multiprocessing
import time
import traceback

import numpy as np

TLS = ("shm", "tcp")
TIMEOUT = 30.0


def recv(conn, timeout=TIMEOUT, backend=None):
    """The next message on `conn`; progresses `backend` (inline) meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if backend is None:
            if conn.poll(min(0.05, max(0.0, deadline - time.monotonic()))):
                return conn.recv()
        else:
            backend.progress()
            if conn.poll(0.0005):
                return conn.recv()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no message from the other process within {timeout} s")


def expect(conn, what, timeout=TIMEOUT, backend=None):
    got = recv(conn, timeout, backend)
    assert got == what, f"expected message {what!r}, got {got!r}"


def _child_main(fn, conn, result, args):
    try:
        fn(conn, *args)
    except BaseException:
        result.send(traceback.format_exc())
    else:
        result.send(None)
    finally:
        result.close()
        conn.close()


class Side:
    def __init__(self, fn, args):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self._result, child_result = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_child_main, args=(fn, child_conn, child_result, args), daemon=True)
        self.process.start()
        child_conn.close()
        child_result.close()

    def send(self, msg):
        self.conn.send(msg)

    def recv(self, timeout=TIMEOUT, backend=None):
        return recv(self.conn, timeout, backend)

    def expect(self, what, timeout=TIMEOUT, backend=None):
        expect(self.conn, what, timeout, backend)

    def kill(self):
        self.process.kill()
        self.process.join(TIMEOUT)

    def finish(self, timeout=TIMEOUT, backend=None):
        """Joins the child (progressing `backend` meanwhile) and raises what it raised."""
        deadline = time.monotonic() + timeout
        while self.process.is_alive() and time.monotonic() < deadline:
            if backend is None:
                self.process.join(0.05)
            else:
                backend.progress()
                self.process.join(0.0005)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(TIMEOUT)
            raise AssertionError(f"the child process did not end within {timeout} s")
        failure = self._result.recv() if self._result.poll(1.0) else "it reported nothing"
        assert failure is None and self.process.exitcode == 0, (
            f"the child process failed (exit code {self.process.exitcode}):\n{failure}"
        )


def spawn_side(fn, *args):
    """Starts `fn(conn, *args)` in a spawned process; `fn` must be a module-level function."""
    return Side(fn, args)


def pattern(n, seed):
    """`n` bytes that differ with `seed` and with the offset."""
    i = np.arange(n, dtype=np.uint64)
    return ((i * 131 + (i >> 8) * 7 + seed * 37 + 1) % 251).astype(np.uint8)


def fill_blocks(buf, offsets, length, seed):
    """Each block gets a pattern of its index and offset, so a misplaced block shows."""
    for k, off in enumerate(offsets):
        buf[off : off + length] = pattern(length, seed * 1000 + k)


def check_blocks(buf, offsets, length, seed, untouched):
    """Asserts every byte of every block, and that bytes outside the blocks still hold `untouched`."""
    outside = np.ones(buf.size, dtype=bool)
    for k, off in enumerate(offsets):
        want = pattern(length, seed * 1000 + k)
        got = buf[off : off + length]
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, f"block {k} at offset {off}: byte {bad[0]} is {got[bad[0]]}, not {want[bad[0]]}"
        outside[off : off + length] = False
    bad = np.flatnonzero(outside & (buf != untouched))
    assert bad.size == 0, f"byte {bad[0]} outside the blocks changed to {buf[bad[0]]}"


def scattered(count, length, gap, start=0):
    """Offsets of `count` blocks of `length` bytes, `gap` bytes apart (not adjacent, so nothing coalesces)."""
    return [start + k * (length + gap) for k in range(count)]


def descs(base, offsets, length, as_array=False, dev=0):
    rows = [(base + off, length, dev) for off in offsets]
    return np.array(rows, dtype=np.uint64) if as_array else rows


FILL = 0xEE  # what memory holds outside the blocks a test moves


def _check(buf, offsets, length, seed):
    try:
        check_blocks(buf, offsets, length, seed, FILL)
    except AssertionError as e:
        return str(e)
    return None


def _collect_notifs(b, count, timeout=TIMEOUT):
    """(sender, bytes) pairs, oldest first, until `count` arrived or `timeout` passed."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        if b.progress_mode == "thread":
            b.wait_notifs(0.05)
        got += b.poll_notifs()
    return got


def serve_target(conn, tls, size, progress="inline", name="target"):
    """A target with `size` bytes of registered numpy memory ("user") and of allocated memory ("alloc").

    It answers commands from the pipe, progressing meanwhile (inline), until ("bye",).
    """
    import ferry

    b = ferry.Backend(name, tls=tls, progress=progress)
    user = np.full(size, FILL, dtype=np.uint8)
    regions = {"user": b.register(user), "alloc": b.allocate(size)}
    mem = {"user": user, "alloc": np.asarray(regions["alloc"])}
    mem["alloc"][:] = FILL
    conn.send((b.metadata(), {k: r.addr for k, r in regions.items()}))
    driven = b if progress == "inline" else None
    peers = {}
    while True:
        cmd, *args = recv(conn, 300, driven)
        if cmd == "bye":
            b.close()
            return
        if cmd == "fill":
            where, offsets, length, seed = args
            mem[where][:] = FILL
            fill_blocks(mem[where], offsets, length, seed)
            conn.send("ok")
        elif cmd == "reset":
            mem[args[0]][:] = FILL
            conn.send("ok")
        elif cmd == "check":
            where, offsets, length, seed = args
            conn.send(_check(mem[where], offsets, length, seed))
        elif cmd == "check_area":
            where, start, size, offsets, length, seed = args
            conn.send(_check(mem[where][start : start + size], [off - start for off in offsets], length, seed))
        elif cmd == "watch":
            # The bytes are checked the moment the first notification is seen:
            # a notification must never overtake its WRITE's data.
            where, offsets, length, seed, count = args
            conn.send("watching")
            got = []
            deadline = time.monotonic() + TIMEOUT
            verdict = "no notification arrived"
            while len(got) < count and time.monotonic() < deadline:
                if driven is None:
                    b.wait_notifs(0.05)
                fresh = b.poll_notifs()
                if fresh and not got:
                    verdict = _check(mem[where], offsets, length, seed)
                got += fresh
            conn.send((got, verdict))
        elif cmd == "notifs":
            conn.send(_collect_notifs(b, *args))
        elif cmd == "load":
            peers[args[0]] = b.load(args[1])
            conn.send("ok")
        elif cmd == "send_notif":
            conn.send(b.send_notif(peers[args[0]], args[1]))
        elif cmd == "stall":
            # No progress at all until told: UCX-emulated transfers into
            # "user" memory stay in flight meanwhile.
            conn.send("stalled")
            expect(conn, "resume")
            conn.send("resumed")
        else:
            raise ValueError(f"unknown command {cmd!r}")


class Target:
    """The test process's handle on a `serve_target` process."""

    def __init__(self, tls, size, progress="inline", name="target"):
        self.tls = tls
        self.size = size
        self.name = name
        self.side = spawn_side(serve_target, tls, size, progress, name)
        self.blob, self.addr = self.side.recv()

    def call(self, *cmd, backend=None):
        self.side.send(cmd)
        return self.side.recv(backend=backend)

    def close(self):
        if self.side.process.is_alive():
            self.side.send(("bye",))
        self.side.finish()


def serve_gpu_target(conn, progress, size):
    """A CUDA target: `size` bytes of device memory ("device") and of page-locked host memory ("pinned").

    The pinned half [size // 2, size) holds blocks of `seed` at the offsets
    the parent sends first; everything else holds FILL.
    """
    import ferry

    offsets, length, seed = conn.recv()
    b = ferry.Backend("gpu-target", memory="cuda", progress=progress)
    device = b.allocate(size)
    pinned = b.allocate_host(size)
    host = np.asarray(pinned)
    host[:] = FILL
    fill_blocks(host[size // 2 :], offsets, length, seed)
    conn.send((b.metadata(), {"device": device.whole(), "pinned": pinned.whole()}))
    driven = b if progress == "inline" else None
    while True:
        cmd, *args = recv(conn, 300, driven)
        if cmd == "bye":
            b.close()
            return
        if cmd == "notifs":
            conn.send(_collect_notifs(b, *args))
        else:
            raise ValueError(f"unknown command {cmd!r}")
