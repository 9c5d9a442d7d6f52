# Sourced by tools/device_*.sh on the lent machine: installs our TVM pair and this package into
# /tmp/site from .dev/ (git-ignored; see tools/device_bf16.sh for what the caller stages there).
site=/tmp/site
if ! PYTHONSAFEPATH=1 PYTHONPATH=$site python3 -c "import tvm, dlrm_tvm" 2>/dev/null; then
  echo "== $(date +%T) install"
  mkdir -p $site
  python3 -m pip install -q --no-index --no-deps --no-compile --target $site .dev/apache_tvm_ffi-*.whl || exit 3
  tar -xJf .dev/tvm_py.tar.xz -C $site || exit 3
  xz -dc -T0 .dev/libtvm_compiler.so.xz > $site/tvm/lib/libtvm_compiler.so || exit 3
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --ignore-requires-python \
    --target $site . || exit 3
fi
# the repo root holds a dlrm_tvm/ without graphs/ (pyproject maps it): never import from cwd
export PYTHONPATH=$site PYTHONSAFEPATH=1
