#!/bin/sh
# pip install of python/ (pyproject.toml, setup.py) from a copy of the
# sources, then a few of the transfer tests against what pip built.
# usage: pip_install.sh SOURCE_DIR PYTHON
set -eu
src=$1
py=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/repo"
cp -r "$src/include" "$src/python" "$work/repo/"
rm -rf "$work/repo/python/build" "$work/repo/python/ferry.egg-info"
"$py" -m pip install --quiet --no-build-isolation --no-deps --target "$work/site" "$work/repo/python"
cd "$work"
PYTHONPATH="$work/site" "$py" -c "import ferry; assert ferry.__file__.startswith('$work/site'), ferry.__file__; print('pip_install:', ferry.__file__, ferry.__version__)"
PYTHONPATH="$work/site" "$py" -m pytest -q -p no:cacheprovider "$src/python/tests/test_transfers.py" -k "shm and tuples"
