import pytest

from twoproc import TLS, Target

TARGET_SIZE = 1 << 20


@pytest.fixture(scope="module", params=TLS)
def target(request):
    """A target process per tls, shared by a module's tests (a spawn costs far more than a test)."""
    t = Target(request.param, TARGET_SIZE)
    yield t
    t.close()
