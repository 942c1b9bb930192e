import pytest

import ferry
from twoproc import TLS, Target

TARGET_SIZE = 1 << 20


@pytest.fixture(scope="module", params=TLS)
def target(request):
    """A target process per tls, shared by a module's tests (a spawn costs far more than a test)."""
    t = Target(request.param, TARGET_SIZE)
    yield t
    t.close()


@pytest.fixture(scope="module")
def cuda():
    """Skips the module's GPU tests unless the ferry module has CUDA and a GPU is usable."""
    if not ferry.has_cuda:
        pytest.skip("the ferry module was built without CUDA")
    try:
        ferry.Backend("probe", memory="cuda").close()
    except ferry.Error as e:
        pytest.skip(f"no usable GPU: {e}")
