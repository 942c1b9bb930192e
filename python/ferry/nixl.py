"""NIXL's Python agent API over ferry: `nixl_agent` and `nixl_agent_config`.

An engine written against `nixl._api` runs on ferry with its import changed
(`from ferry.nixl import nixl_agent, nixl_agent_config`), or unchanged under
`python -m ferry.nixl_shim app.py`. One backend, "UCX", is ferry's
ucx_backend: host memory ("DRAM", "cpu") always, device memory ("VRAM",
"cuda") where the module was built with CUDA and a GPU is usable.

What differs from NIXL is written next to each method and in the README's
table ("ferry and NIXL, from Python"); what ferry cannot do raises
NotImplementedError naming the method.
"""

import struct

import numpy as np

import ferry

NIXL_INIT_AGENT = "NIXL_INIT_AGENT"
DEFAULT_COMM_PORT = 8888
_MEM_TYPES = {"DRAM": "DRAM", "cpu": "DRAM", "VRAM": "VRAM", "cuda": "VRAM"}


# NIXL's exception names, each also the ferry.Error it stands for.
class nixlError(ferry.Error):
    pass


class nixlInvalidParamError(nixlError):
    pass


class nixlNotFoundError(nixlError):
    pass


class nixlRepostActiveError(nixlError):
    pass


class nixlRemoteDisconnectError(nixlError):
    pass


class nixlBackendError(nixlError):
    pass


_BY_STATUS = {
    ferry.Status.INVALID_ARGUMENT: nixlInvalidParamError,
    ferry.Status.NOT_REGISTERED: nixlNotFoundError,
    ferry.Status.NO_SUCH_PEER: nixlNotFoundError,
    ferry.Status.BUSY: nixlRepostActiveError,
    ferry.Status.PEER_FAILED: nixlRemoteDisconnectError,
}


def _raise(status, message):
    error = _BY_STATUS.get(status, nixlBackendError)(message)
    error.status, error.ucx_status = status, 0
    raise error


class _translated:
    """Turns ferry.Error into NIXL's class for the same status, message kept."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, ferry.Error) and not isinstance(error, nixlError):
            translated = _BY_STATUS.get(error.status, nixlBackendError)(str(error))
            translated.status, translated.ucx_status = error.status, error.ucx_status
            raise translated from error
        return False


def _not_implemented(method, why):
    raise NotImplementedError(f"ferry.nixl: {method} is not implemented: {why}")


class nixl_agent_config:
    """enable_prog_thread picks ferry's progress thread (progress="thread"); else inline progress."""

    def __init__(self, enable_prog_thread=True, enable_listen_thread=False, listen_port=0, backends=("UCX",),
                 num_threads=0):
        self.enable_pthread = enable_prog_thread
        self.enable_listen = enable_listen_thread
        self.port = listen_port
        self.backends = list(backends)
        self.num_threads = num_threads


class nixl_desc_list:
    """A transfer (or registration) descriptor list: rows of (addr, len, dev) and a memory type."""

    def __init__(self, rows, mem_type, tags=None, sources=None):
        self.rows = rows
        self.mem_type = mem_type
        self.tags = tags
        self.sources = sources  # the objects the rows came from, kept for register_memory

    def __len__(self):
        return len(self.rows)

    def descCount(self):
        return len(self.rows)

    def isEmpty(self):
        return len(self.rows) == 0

    def getType(self):
        return self.mem_type


class _prepped:
    def __init__(self, agent, rows, mem_type):
        self.agent = agent  # None: local
        self.rows = rows
        self.mem_type = mem_type


class _xfer_handle:
    def __init__(self, xfer, notif, remote_agent):
        self.xfer = xfer
        self.notif = notif
        self.remote_agent = remote_agent
        self.status = ferry.Status.OK  # the last post's or check's


_STATES = {ferry.Status.OK: "DONE", ferry.Status.IN_PROGRESS: "PROC"}
_REFUSED = {ferry.Status.BUSY, ferry.Status.INVALID_ARGUMENT}


def _object_desc(obj):
    """(addr, len, dev, mem_type) of a tensor or array, without copying."""
    if hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):  # a torch tensor
        if not obj.is_contiguous():
            _raise(ferry.Status.INVALID_ARGUMENT, "a tensor to register or transfer must be contiguous")
        cuda = str(obj.device).startswith("cuda")
        return obj.data_ptr(), obj.numel() * obj.element_size(), (obj.get_device() if cuda else 0), (
            "VRAM" if cuda else "DRAM")
    if isinstance(obj, np.ndarray):
        if not obj.flags.c_contiguous:
            _raise(ferry.Status.INVALID_ARGUMENT, "an array to register or transfer must be C-contiguous")
        return obj.ctypes.data, obj.nbytes, 0, "DRAM"
    _raise(ferry.Status.INVALID_ARGUMENT, f"expected a tensor, a numpy array or (addr, len, dev) tuples, got "
                                          f"{type(obj).__name__}")


def _mem_type(mem_type):
    if mem_type not in _MEM_TYPES:
        _raise(ferry.Status.INVALID_ARGUMENT, f"memory type {mem_type!r}: ferry serves DRAM and VRAM (or cpu, cuda)")
    return _MEM_TYPES[mem_type]


def _descs(descs, mem_type, width, what):
    """NIXL's inputs as a nixl_desc_list: a list, a tensor, a list of tensors or arrays, tuples, an N x 3/4 array."""
    if isinstance(descs, nixl_desc_list):
        return descs
    if isinstance(descs, np.ndarray) and descs.ndim == 2 and descs.dtype.kind in "iu" and descs.shape[1] in (3, 4):
        if mem_type is None:
            _raise(ferry.Status.INVALID_ARGUMENT, f"{what}: a descriptor array needs mem_type")
        rows = np.ascontiguousarray(descs[:, :3], dtype=np.uint64)
        tags = [b""] * len(rows) if descs.shape[1] == 3 else [str(int(t)).encode() for t in descs[:, 3]]
        return nixl_desc_list(rows, _mem_type(mem_type), tags)
    if isinstance(descs, (list, tuple)) and descs and isinstance(descs[0], tuple):
        if mem_type is None:
            _raise(ferry.Status.INVALID_ARGUMENT, f"{what}: a list of tuples needs mem_type")
        rows, tags = [], []
        for i, d in enumerate(descs):
            if len(d) not in (3, width):
                _raise(ferry.Status.INVALID_ARGUMENT,
                       f"{what}[{i}]: expected (addr, len, dev{', tag' if width == 4 else ''}), got {len(d)} items")
            if any(not isinstance(v, (int, np.integer)) or v < 0 for v in d[:3]):
                _raise(ferry.Status.INVALID_ARGUMENT, f"{what}[{i}]: addr, len and dev must be integers >= 0")
            rows.append(d[:3])
            tags.append(d[3] if len(d) == 4 else b"")
        return nixl_desc_list(np.array(rows, dtype=np.uint64).reshape(-1, 3), _mem_type(mem_type), tags)
    objects = descs if isinstance(descs, (list, tuple)) else [descs]
    if not objects:
        return nixl_desc_list(np.zeros((0, 3), dtype=np.uint64), _mem_type(mem_type or "DRAM"), [])
    found = [_object_desc(o) for o in objects]
    kinds = {f[3] for f in found}
    if len(kinds) != 1:
        _raise(ferry.Status.INVALID_ARGUMENT, f"{what}: tensors of one memory type only, got {sorted(kinds)}")
    rows = np.array([f[:3] for f in found], dtype=np.uint64).reshape(-1, 3)
    return nixl_desc_list(rows, kinds.pop(), [b""] * len(found), list(objects))


_SERIAL_MAGIC = b"FXDL"


class nixl_agent:
    """NIXL's agent over one ferry backend. Not thread-safe where ferry's inline policy is not
    (enable_prog_thread=False: only the creating thread may call it)."""

    def __init__(self, agent_name, nixl_conf=None, instantiate_all=False):
        conf = nixl_conf or nixl_agent_config()
        for b in conf.backends:
            if b != "UCX":
                _not_implemented(f"nixl_agent(backends=[{b!r}])", "ferry has one backend, UCX")
        self.name = agent_name
        progress = "thread" if conf.enable_pthread else "inline"
        self._backend = None
        with _translated():
            if ferry.has_cuda:
                try:
                    self._backend = ferry.Backend(agent_name, progress=progress, memory="cuda")
                except ferry.Error:
                    self._backend = None  # no usable GPU or CUDA-capable UCX: host memory only
            if self._backend is None:
                self._backend = ferry.Backend(agent_name, progress=progress, memory="host")
        self._vram = self._backend.memory_kind == "cuda"
        # enable_listen_thread: ferry's listener, on every interface as NIXL's, serving our metadata and
        # keeping what peers push (check_remote_metadata loads it) or invalidate (_drop_invalidated unloads
        # them). listen_port 0: any port (listen_port says).
        self._listener = None
        if conf.enable_listen:
            with _translated():
                self._listener = ferry.Listener(bind="0.0.0.0", port=conf.port)
                self._listener.publish(self._backend.metadata())
        self._peers = {}
        # As NIXL: memory stays registered until deregister_memory, whatever becomes of the list.
        self._registered = {}  # the rows' bytes -> their regions
        self.notifs = {}
        self.backends = {"UCX": 0}

    @property
    def listen_port(self):
        """The port the listener took (enable_listen_thread), or None. Not in NIXL: its port is fixed."""
        return self._listener.port if self._listener else None

    def _republish(self):
        if self._listener:
            with _translated():
                self._listener.publish(self._backend.metadata())

    def _drop_invalidated(self):
        # Every call that names or loads an agent, and get_new_notifs, comes here first: an invalidation
        # that came before a load concerns the incarnation loaded before it.
        if not self._listener:
            return
        for agent in self._listener.take_invalidations():
            peer = self._peers.pop(agent, None)
            if peer is not None:
                with _translated():
                    self._backend.unload(peer)

    # ---- plugins and backends ------------------------------------------------
    def get_plugin_list(self):
        return ["UCX"]

    def get_plugin_mem_types(self, backend):
        return (["DRAM", "VRAM"] if self._vram else ["DRAM"]) if backend == "UCX" else []

    def get_plugin_params(self, backend):
        return {}

    get_backend_mem_types = get_plugin_mem_types
    get_backend_params = get_plugin_params

    def create_backend(self, backend, initParams=None):
        if backend != "UCX":
            _not_implemented(f"create_backend({backend!r})", "ferry has one backend, UCX, created with the agent")

    # ---- memory ----------------------------------------------------------------
    def get_reg_descs(self, descs, mem_type=None, is_sorted=False):
        return _descs(descs, mem_type, 4, "get_reg_descs")

    def get_xfer_descs(self, descs, mem_type=None, is_sorted=False):
        return _descs(descs, mem_type, 3, "get_xfer_descs")

    def register_memory(self, reg_list, mem_type=None, is_sorted=False, backends=()):
        dlist = self.get_reg_descs(reg_list, mem_type, is_sorted)
        if dlist.mem_type == "VRAM" and not self._vram:
            _raise(ferry.Status.INVALID_ARGUMENT, "register_memory: VRAM needs a ferry module with CUDA and a GPU")
        regions = []
        with _translated():
            try:
                for i, (addr, length, dev) in enumerate(dlist.rows.tolist()):
                    source = dlist.sources[i] if dlist.sources else None
                    if isinstance(source, np.ndarray) and source.flags.writeable:
                        regions.append(self._backend.register(source))
                    else:
                        # A tensor or a raw (addr, len, dev): its owner keeps it alive, as with NIXL.
                        regions.append(self._backend.register_address(addr, length, dev))
            except BaseException:
                for r in regions:
                    r.close()
                raise
        self._registered.setdefault(dlist.rows.tobytes(), []).extend(regions)
        self._republish()
        return dlist

    def deregister_memory(self, dereg_list, backends=()):
        key = self.get_reg_descs(dereg_list).rows.tobytes()
        if key not in self._registered:
            _raise(ferry.Status.NOT_REGISTERED, "deregister_memory: these descriptors were not registered")
        regions = self._registered[key]
        with _translated():
            while regions:
                regions[-1].close()  # raises while a transfer uses it; the rest stay registered
                regions.pop()
        del self._registered[key]
        self._republish()

    def query_memory(self, *args, **kwargs):
        _not_implemented("query_memory", "ferry has no storage backends")

    # ---- peers and metadata ----------------------------------------------------
    def get_agent_metadata(self):
        with _translated():
            return self._backend.metadata()

    def add_remote_agent(self, metadata):
        self._drop_invalidated()
        with _translated():
            peer = self._backend.load(bytes(metadata))
            name = self._backend.peer_name(peer)
        self._peers[name] = peer
        return name

    def remove_remote_agent(self, agent):
        with _translated():
            self._backend.unload(self._peer(agent, "remove_remote_agent"))
        del self._peers[agent]

    def check_remote_metadata(self, agent, descs=None):
        """True once `agent` is loaded; loads it first if it pushed its metadata to our listener."""
        self._drop_invalidated()
        if agent not in self._peers and self._listener:
            blob = self._listener.pushed(agent)
            if blob is not None:
                self.add_remote_agent(blob)
        return agent in self._peers

    def make_connection(self, remote_agent, backends=()):
        with _translated():
            status = self._backend.connect(self._peer(remote_agent, "make_connection"), timeout=10.0)
        if status != ferry.Status.OK:
            _raise(status, f"make_connection: {remote_agent}: {status.name}")

    def get_partial_agent_metadata(self, *args, **kwargs):
        _not_implemented("get_partial_agent_metadata", "ferry's metadata is always whole")

    def send_local_metadata(self, ip_addr="", port=DEFAULT_COMM_PORT):
        """Pushes our metadata to the listener at ip_addr:port (another agent's, enable_listen_thread)."""
        if not ip_addr:
            _not_implemented("send_local_metadata without ip_addr", "ferry's Python module has no etcd client")
        with _translated():
            ferry.push_metadata(ip_addr, port, self._backend.metadata())

    def send_partial_agent_metadata(self, *args, **kwargs):
        _not_implemented("send_partial_agent_metadata", "ferry's metadata is always whole")

    def fetch_remote_metadata(self, remote_agent, ip_addr="", port=DEFAULT_COMM_PORT):
        """Fetches and loads the metadata the listener at ip_addr:port serves, at once (NIXL does it in the
        background: check_remote_metadata is then already True)."""
        if not ip_addr:
            _not_implemented("fetch_remote_metadata without ip_addr", "ferry's Python module has no etcd client")
        with _translated():
            blob = ferry.fetch_metadata(ip_addr, port)
        name = self.add_remote_agent(blob)
        if name != remote_agent:
            self.remove_remote_agent(name)
            _raise(ferry.Status.INVALID_ARGUMENT,
                   f"fetch_remote_metadata: {ip_addr}:{port} serves agent {name!r}, not {remote_agent!r}")

    def invalidate_local_metadata(self, ip_addr="", port=DEFAULT_COMM_PORT):
        """Tells the listener at ip_addr:port that our metadata is no longer valid: its agent unloads us at its
        next call that names or loads an agent, or get_new_notifs (NIXL's listener thread does it at once)."""
        if not ip_addr:
            _not_implemented("invalidate_local_metadata without ip_addr", "ferry's Python module has no etcd client")
        with _translated():
            ferry.invalidate_metadata(ip_addr, port, self.name)

    def _peer(self, agent, what):
        self._drop_invalidated()
        if agent == self.name and agent not in self._peers:
            # Loopback: this agent as its own peer, as NIXL allows.
            self.add_remote_agent(self.get_agent_metadata())
        if agent not in self._peers:
            _raise(ferry.Status.NO_SUCH_PEER, f"{what}: no remote agent {agent!r} was added")
        return self._peers[agent]

    # ---- transfers -------------------------------------------------------------
    def _prepare(self, operation, local_rows, remote_rows, agent, notif, coalesce, what):
        if operation not in ("READ", "WRITE"):
            _raise(ferry.Status.INVALID_ARGUMENT, f"{what}: operation must be 'READ' or 'WRITE', got {operation!r}")
        peer = self._peer(agent, what)
        with _translated():
            x = self._backend.prepare(operation.lower(), local_rows, remote_rows, peer, coalesce=coalesce)
        return _xfer_handle(x, bytes(notif) if isinstance(notif, (bytes, bytearray)) else str(notif).encode(), agent)

    def initialize_xfer(self, operation, local_descs, remote_descs, remote_agent, notif_msg=b"", backends=()):
        local = self.get_xfer_descs(local_descs)
        remote = self.get_xfer_descs(remote_descs)
        return self._prepare(operation, local.rows, remote.rows, remote_agent, notif_msg, True, "initialize_xfer")

    def prep_xfer_dlist(self, agent_name, xfer_list, mem_type=None, is_sorted=False, backends=()):
        descs = self.get_xfer_descs(xfer_list, mem_type, is_sorted)
        agent = None if agent_name in (NIXL_INIT_AGENT, "") else agent_name
        if agent is not None:
            self._peer(agent, "prep_xfer_dlist")
        return _prepped(agent, descs.rows, descs.mem_type)

    def make_prepped_xfer(self, operation, local_xfer_side, local_indices, remote_xfer_side, remote_indices,
                          notif_msg=b"", backends=(), skip_desc_merge=False):
        if local_xfer_side.agent is not None or remote_xfer_side.agent is None:
            _raise(ferry.Status.INVALID_ARGUMENT, "make_prepped_xfer: the local side must be prepared with "
                                                  "NIXL_INIT_AGENT and the remote side with a remote agent's name")
        local = self._select(local_xfer_side, local_indices, "local_indices")
        remote = self._select(remote_xfer_side, remote_indices, "remote_indices")
        return self._prepare(operation, local, remote, remote_xfer_side.agent, notif_msg, not skip_desc_merge,
                             "make_prepped_xfer")

    @staticmethod
    def _select(side, indices, what):
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(side.rows)):
            _raise(ferry.Status.INVALID_ARGUMENT, f"make_prepped_xfer: {what} must lie in [0, {len(side.rows)})")
        return side.rows[index]

    def release_dlist_handle(self, handle):
        handle.rows = np.zeros((0, 3), dtype=np.uint64)

    def transfer(self, handle, notif_msg=b""):
        """"DONE", "PROC", or "ERR" (the peer failed, or the transfer ended otherwise than well: handle.status
        says how). Reposting a transfer in flight raises nixlRepostActiveError."""
        status = self._backend.post(handle.xfer, bytes(notif_msg) if notif_msg else (handle.notif or None))
        if status < 0 and status in _REFUSED:
            _raise(status, f"transfer: {status.name}")
        handle.status = status
        return _STATES.get(status, "ERR")

    def check_xfer_state(self, handle):
        status = self._backend.check(handle.xfer)
        if status == ferry.Status.INVALID_ARGUMENT:
            _raise(status, "check_xfer_state: the handle was released")
        handle.status = status
        return _STATES.get(status, "ERR")

    def query_xfer_backend(self, handle):
        return "UCX"

    def release_xfer_handle(self, handle):
        status = self._backend.release(handle.xfer)
        if status != ferry.Status.OK:
            _raise(status, f"release_xfer_handle: {status.name}")

    def get_xfer_telemetry(self, handle):
        _not_implemented("get_xfer_telemetry", "the Python module is built without telemetry")

    def prep_mem_view(self, *args, **kwargs):
        _not_implemented("prep_mem_view", "ferry has no device API yet")

    # ---- notifications -----------------------------------------------------------
    def get_new_notifs(self, backends=()):
        self._drop_invalidated()
        with _translated():
            return self._backend.take_notifs()

    def update_notifs(self, backends=()):
        for agent, messages in self.get_new_notifs().items():
            self.notifs.setdefault(agent, []).extend(messages)
        return self.notifs

    def check_remote_xfer_done(self, remote_agent_name, lookup_tag, backends=(), tag_is_prefix=True):
        self.update_notifs()
        tag = lookup_tag.encode() if isinstance(lookup_tag, str) else bytes(lookup_tag)
        for message in self.notifs.get(remote_agent_name, []):
            if message.startswith(tag) if tag_is_prefix else tag in message:
                self.notifs[remote_agent_name].remove(message)
                return True
        return False

    def send_notif(self, remote_agent_name, notif_msg, backend=None):
        with _translated():
            status = self._backend.send_notif(self._peer(remote_agent_name, "send_notif"), notif_msg)
        if status != ferry.Status.OK:
            _raise(status, f"send_notif: {remote_agent_name}: {status.name}")

    # ---- serialized descriptor lists -------------------------------------------------
    def get_serialized_descs(self, descs):
        """Bytes of a descriptor list (not pickle: the receiver only parses numbers)."""
        d = descs if isinstance(descs, nixl_desc_list) else self.get_xfer_descs(descs)
        kind = d.mem_type.encode()
        return _SERIAL_MAGIC + struct.pack("<B4sQ", 1, kind.ljust(4), len(d.rows)) + d.rows.astype("<u8").tobytes()

    def deserialize_descs(self, serialized_descs):
        data = bytes(serialized_descs)
        header = len(_SERIAL_MAGIC) + struct.calcsize("<B4sQ")
        if len(data) < header or not data.startswith(_SERIAL_MAGIC):
            _raise(ferry.Status.INVALID_ARGUMENT, "deserialize_descs: not a serialized descriptor list")
        version, kind, count = struct.unpack_from("<B4sQ", data, len(_SERIAL_MAGIC))
        mem_type = kind.rstrip(b" ").decode(errors="replace")
        if version != 1 or mem_type not in ("DRAM", "VRAM"):
            _raise(ferry.Status.INVALID_ARGUMENT, f"deserialize_descs: version {version}, memory type {mem_type!r}")
        if count > (len(data) - header) // 24 or len(data) != header + 24 * count:
            _raise(ferry.Status.INVALID_ARGUMENT,
                   f"deserialize_descs: {len(data) - header} bytes of rows for {count} descriptors")
        rows = np.frombuffer(data, dtype="<u8", count=3 * count, offset=header).reshape(-1, 3).astype(np.uint64)
        return nixl_desc_list(rows, mem_type, [b""] * count)
