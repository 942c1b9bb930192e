"""Runs a program written against NIXL's Python API on ferry, unchanged.

    python3 -m ferry.nixl_shim app.py [ARGS...]

makes `import nixl`, `from nixl._api import nixl_agent, nixl_agent_config`
and `from nixl import nixl_agent` resolve to ferry.nixl, then runs app.py as
__main__. A program can do the same itself with `ferry.nixl_shim.install()`
before it imports nixl.
"""

import runpy
import sys
import types

from . import nixl


def install():
    """Puts ferry.nixl where `nixl` and `nixl._api` are looked up."""
    package = types.ModuleType("nixl")
    package.__path__ = []
    for name in ("nixl_agent", "nixl_agent_config", "NIXL_INIT_AGENT"):
        setattr(package, name, getattr(nixl, name))
    package._api = nixl
    sys.modules["nixl"] = package
    sys.modules["nixl._api"] = nixl


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    install()
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
