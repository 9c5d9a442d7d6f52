#!/bin/bash
# Stage .dev/ (git-ignored) for tools/device_*.sh: what the lent machine installs from, since it
# reaches no package index and TVM's compiler library does not fit the 64 MiB that travels.
#   .dev/tvm_py.tar.xz         the installed tvm package without libtvm_compiler.so
#   .dev/libtvm_compiler.so.xz that library, stripped, xz -9e
#   .dev/apache_tvm_ffi-*.whl  the pinned apache-tvm-ffi wheel for the device's Python (cp312)
# Then: run(command="OUT=$OUT bash tools/device_amx.sh", carry=[".dev"]).
# Takes a few minutes on 2 cores (xz). PYVER=3.12 by default (the lent machine's python3).
set -eu
PYVER=${PYVER:-3.12}
mkdir -p .dev
site=$(python -c "import tvm, os; print(os.path.dirname(os.path.dirname(tvm.__file__)))")
tmp=$(mktemp -d)
echo "== tvm package from $site"
tar -C "$site" --exclude=tvm/lib/libtvm_compiler.so --exclude='__pycache__' -cf - tvm \
  | xz -9 -T0 > .dev/tvm_py.tar.xz
echo "== libtvm_compiler.so (strip, xz -9e)"
cp "$site/tvm/lib/libtvm_compiler.so" "$tmp/c.so"
strip --strip-unneeded "$tmp/c.so" 2>/dev/null || true
xz -9e -T0 -c "$tmp/c.so" > .dev/libtvm_compiler.so.xz
echo "== apache-tvm-ffi wheel for Python $PYVER"
ffi=$(python -c "import importlib.metadata as m; print(m.version('apache-tvm-ffi'))")
python -m pip download -q --no-deps --only-binary :all: --python-version "$PYVER" \
  -d .dev "apache-tvm-ffi==$ffi"
rm -rf "$tmp"
du -ch .dev/* | tail -n 4
