"""ferry: descriptor-list READ/WRITE between processes, hosts and GPUs over UCX.

    import ferry
    b = ferry.Backend("decode-0")                 # host memory, inline progress
    kv = b.allocate(64 << 20)                     # or b.register(numpy_array)
    blob = b.metadata()                           # hand it to the peer

One Python call moves a whole descriptor list: prepare() takes lists of
(addr, len, dev) tuples or numpy arrays of shape (N, 3); post() and check()
return a ferry.Status; failures raise ferry.Error (one subclass per status)
with ferry's message.
"""

from ._ferry import (  # noqa: F401
    BusyError,
    CanceledError,
    DeviceError,
    Error,
    InvalidArgumentError,
    Listener,
    NoMemoryError,
    NoSuchPeerError,
    NotRegisteredError,
    Op,
    Peer,
    PeerFailedError,
    Region,
    Status,
    TimedOutError,
    UcxError,
    Xfer,
    __version__,
    fetch_metadata,
    has_cuda,
    invalidate_metadata,
    push_metadata,
)
from . import _ferry

READ = Op.READ
WRITE = Op.WRITE


def _invalid_argument(message):
    # As the module raises its own: every ferry.Error carries status and ucx_status.
    error = InvalidArgumentError(message)
    error.status = Status.INVALID_ARGUMENT
    error.ucx_status = 0
    return error


def Backend(name, progress="inline", memory="host", **config):
    """A ucx_backend named `name` (1 to 255 bytes).

    progress: "inline" (the creating thread drives UCX through the calls it
    makes; only that thread may use the backend) or "thread" (a progress
    thread does; any thread may call, and waits release the GIL).
    memory: "host", or "cuda" where the module was built with CUDA.
    config: tls="shm"|"tcp"|..., ucx_options={"NAME": "value"},
    error_handling="peer"|"none", keepalive_interval, xfer_timeout,
    close_timeout, progress_spin (seconds), max_notif_size (bytes),
    cuda_device (int). Use it as a context manager, or call close().
    """
    if progress not in ("inline", "thread"):
        raise _invalid_argument(f"Backend: progress must be 'inline' or 'thread', got {progress!r}")
    if memory not in ("host", "cuda"):
        raise _invalid_argument(f"Backend: memory must be 'host' or 'cuda', got {memory!r}")
    if memory == "cuda" and not has_cuda:
        raise _invalid_argument("Backend: memory='cuda' needs a ferry module built with CUDA (ferry::cuda)")
    return getattr(_ferry, f"_{memory}_{progress}")(name, **config)
