#!/usr/bin/env bash
# Which Python versions dlrm-tvm installs and runs on (docs/python-versions.md).
#
# For each version: a fresh venv, `pip install -e "REPO[test]"` from the package index, a subset
# of the tests, and README command 1's train part; then a verdict table. The interpreter you run
# this from is never touched: every version gets its own venv.
#
#   tools/python_versions.sh                  # 3.10 3.11 3.12 3.13
#   tools/python_versions.sh 3.12 3.13        # only these
#
# Environment:
#   VENV_ROOT  where venvs, runs and logs go (default /tmp): VENV_ROOT/pyXY (the venv),
#              VENV_ROOT/pyXY-run (the README run), VENV_ROOT/pyXY-{install,tests,readme}.log
#   REUSE=1    keep an existing VENV_ROOT/pyXY and skip its install
#   STEPS      training steps of the README run (default 200, as in the README)
#   TESTS      the test subset (default below); run with -x
#   PYTHON_3_12=/path/to/python3.12 (etc.) names an interpreter; else pythonX.Y from pyenv's
#              versions, else from PATH
#
# Off Python 3.11 pip takes torch==2.13.0 (the test extra) from the package index as a CUDA
# build: about 5 GB in each venv (only 3.11 has the CPU wheel on this machine's disk).
# A version that pyproject.toml's requires-python does not admit is reported as such without an
# install (pip would backtrack for many minutes before refusing it): widen the bound to try it.
# Exit status: 0 when every version asked for installed, passed the subset and learned in the
# README run; 1 otherwise.

set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_ROOT="${VENV_ROOT:-/tmp}"
STEPS="${STEPS:-200}"
TESTS="${TESTS:-tests/test_config.py tests/test_config_typing.py tests/test_first_hour.py tests/test_model_vs_torch.py}"
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(3.10 3.11 3.12 3.13)

find_python() {  # $1 = X.Y -> path of an interpreter of that version, or nothing
    local v="$1" var="PYTHON_${1/./_}" p
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    for p in $(ls -d "$root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V -r); do
        echo "$p"; return
    done
    p="$(command -v "python$v" 2>/dev/null)" && "$p" -c pass 2>/dev/null && echo "$p"
}

ROWS=()
ALL_OK=1
for v in "${VERSIONS[@]}"; do
    tag="py${v/./}"
    venv="$VENV_ROOT/$tag"
    run="$VENV_ROOT/$tag-run"
    ilog="$VENV_ROOT/$tag-install.log"
    tlog="$VENV_ROOT/$tag-tests.log"
    rlog="$VENV_ROOT/$tag-readme.log"
    py="$(find_python "$v")"
    full="-"; install="-"; tests="-"; readme="-"; verdict="FAIL"
    echo "== Python $v ($(date +%T))"
    if [ -z "$py" ]; then
        install="no interpreter"
    else
        full="$("$py" -c 'import platform; print(platform.python_version())')"
        if ! "$py" - "$REPO/pyproject.toml" <<'EOF'
import re, sys
# requires-python as pyproject.toml states it (X.Y bounds joined by commas), against this Python
m = re.search(r'^requires-python\s*=\s*"([^"]*)"', open(sys.argv[1]).read(), re.M)
ops = {">=": "__ge__", ">": "__gt__", "<=": "__le__", "<": "__lt__", "==": "__eq__", "!=": "__ne__"}
for part in (m.group(1).split(",") if m else []):
    op, ver = re.match(r"\s*(>=|<=|==|!=|>|<)\s*([\d.]+)", part).groups()
    want = tuple(int(x) for x in ver.split("."))
    if not getattr(sys.version_info[:len(want)], ops[op])(want):
        sys.exit(f"   Python {sys.version.split()[0]} is not admitted by requires-python "
                 f"{m.group(1)!r}: widen it in pyproject.toml to try this version")
EOF
        then
            # pip would not refuse at once: with the [test] extra it backtracks through every
            # release of every dependency (many minutes, gigabytes) before saying so.
            install="not admitted by requires-python"
        elif [ "${REUSE:-0}" = 1 ] && [ -x "$venv/bin/python" ]; then
            install="ok (reused)"
        elif t0=$SECONDS && "$py" -m venv --clear "$venv" > "$ilog" 2>&1 \
             && "$venv/bin/python" -m pip install -e "$REPO[test]" >> "$ilog" 2>&1; then
            install="ok ($((SECONDS - t0)) s)"
        else
            install="FAIL: $(grep -E '^ERROR' "$ilog" | head -1 | cut -c1-120)"
        fi
    fi
    if [[ "$install" == ok* ]]; then
        "$venv/bin/python" -m pip list 2>/dev/null \
            | grep -iE '^(apache-tvm|apache-tvm-ffi|torch|numpy|onnx|onnxruntime|tomli) ' \
            | awk '{printf "%s %s  ", $1, $2} END {print ""}'
        echo "   tests: $TESTS"
        (cd "$REPO" && PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -x -p no:cacheprovider $TESTS) \
            > "$tlog" 2>&1
        trc=$?
        counts="$(tail -3 "$tlog" | grep -oE '[0-9]+ (passed|failed|skipped|errors?)' \
                  | paste -sd, - | sed 's/,/, /g')"
        tests="${counts:-no result} (rc $trc)"
        echo "   $tests"
        rm -rf "$run"
        (cd "$VENV_ROOT" && PATH="$venv/bin:$PATH" "$venv/bin/dlrm-tvm" train --config tiny --steps "$STEPS" \
            --out "$run" --overwrite) > "$rlog" 2>&1
        rrc=$?
        readme="$("$venv/bin/python" - "$run" "$rrc" <<'EOF'
import json, sys
from pathlib import Path
run, rc = Path(sys.argv[1]), int(sys.argv[2])
try:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x["loss"] for x in lines if x.get("kind") != "eval"]
    s = json.loads((run / "summary.json").read_text())
    ev = s.get("eval") or {}
    first, last = sum(train[:10]) / len(train[:10]), sum(train[-10:]) / len(train[-10:])
    ok = rc == 0 and last < first and ev.get("auc", 0) > 0.6
    print(f"{'ok' if ok else 'FAIL'}: loss {first:.3f} -> {last:.3f}, "
          f"held-out auc {ev.get('auc', float('nan')):.4f} (rc {rc})")
except Exception as e:  # no run directory, or an unreadable one
    print(f"FAIL: rc {rc}, {type(e).__name__}: {e}")
EOF
)"
        echo "   README: $readme"
        if [ "$trc" -eq 0 ] && [[ "$readme" == ok* ]]; then verdict="ok"; fi
    fi
    [ "$verdict" = ok ] || ALL_OK=0
    ROWS+=("| $v | $full | $install | $tests | $readme | $verdict |")
done

echo
echo "| Python | interpreter | install | tests (subset, -x) | README command 1 (train) | verdict |"
echo "| --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
echo "logs: $VENV_ROOT/pyXY-{install,tests,readme}.log"
[ "$ALL_OK" = 1 ]
