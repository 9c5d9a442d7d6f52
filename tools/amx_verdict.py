"""The AMX goals on an AMX host, from tools/device_amx.sh's output folder: one PASS/MISS line
per goal (or "n/a" with the reason when a file is missing).

    python tools/amx_verdict.py OUT_DIR

OUT_DIR holds pytest-amx.log, gemms-mlperf-amx.json (host rules), optionally
gemms-mlperf-vdpbf16ps.json (cooperlake's rules: the vdpbf16ps kernels on the same machine),
and bench-{mlperf,small,dcnv2}-amx.json. Goals: native numerics pass (no failure or error, no
AMX test skipped, at least NATIVE_MIN_PASSED passed); every mlperf GEMM with all dims >= 128
runs on the AMX rule and ahead of torch's bf16 matmul; each config's bf16 step ahead of
torch.compile bf16.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _line(ok: bool, what: str, got: str) -> str:
    return f"{'PASS' if ok else 'MISS'}  {what}: {got}"


def _load(d: Path, name: str):
    p = d / name
    return json.loads(p.read_text()) if p.exists() else None


# What "native tests pass" means for pytest-amx.log (tests/test_amx.py and
# tests/test_amx_permission.py run with -rs on the AMX host): pytest's summary line is there (a
# run cut off by its time limit has none); nothing failed or errored; at least NATIVE_MIN_PASSED
# passed (63 on the AMX Xeon of 2026-12-08, 16 of them the native tier: fewer means tests
# went uncollected or the run was cut short); every skip is listed with its reason (-rs) and
# none is a hardware skip ("this CPU has no amx_tile/amx_bf16/avx512_bf16"): on an AMX host the
# native tier must run.
NATIVE_MIN_PASSED = 60
_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b")
_SUMMARY = re.compile(r"^=*\s*(?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|"
                      r"deselected|warnings?)(?:, )?)+(?: in [\d.]+s.*)?\s*=*$", re.M)
_SKIP = re.compile(r"^SKIPPED \[(\d+)\] ([^\n]*)$", re.M)
_HARDWARE_SKIP = re.compile(r"\bno (?:[\w/]*/)?(?:amx_tile|amx_bf16|avx512_bf16)\b")


def pytest_counts(text: str) -> dict[str, int] | None:
    """{"passed": n, "failed": n, "errors": n, "skipped": n, ...} from the last pytest summary
    line in ``text``; None when there is none."""
    lines = _SUMMARY.findall(text)
    if not lines:
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for n, what in _COUNT.findall(lines[-1]):
        counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def pytest_goal(d: Path) -> list[str]:
    p = d / "pytest-amx.log"
    if not p.exists():
        return ["n/a   native tests: no pytest-amx.log"]
    text = p.read_text()
    what = "native AMX tests (numerics within 1e-5 of float64, permission, peak)"
    c = pytest_counts(text)
    if c is None:
        return [_line(False, what, "no pytest summary line (cut off?)")]
    skips = _SKIP.findall(text)
    why = []
    if c["failed"] or c["errors"]:
        why.append("failures or errors")
    if c["passed"] < NATIVE_MIN_PASSED:
        why.append(f"fewer than the {NATIVE_MIN_PASSED} expected passed")
    if sum(int(n) for n, _ in skips) != c["skipped"]:
        why.append("skips without their reasons (run pytest with -rs)")
    hw = [r for _, r in skips if _HARDWARE_SKIP.search(r)]
    if hw:
        why.append("native tests skipped: " + "; ".join(hw))
    return [_line(not why, what, f"{c['passed']} passed, {c['failed']} failed, {c['errors']} "
                  f"errors, {c['skipped']} skipped" + (f" ({', '.join(why)})" if why else ""))]


def gemm_goals(r: dict, before: dict | None) -> list[str]:
    out = []
    amx_peak = r.get("amx_bf16_peak_gflops")
    out.append(_line(bool(amx_peak), "AMX peak measured (tile loop)",
                     f"{amx_peak:.0f} GFLOP/s, vdpbf16ps {r.get('bf16_peak_gflops') or 0:.0f}"
                     if amx_peak else "none: this host has no AMX"))
    big = [x for x in r["rows"] if min(x["shape"]) >= 128]
    off = [x["kernel"] for x in big if x["rule"] != "gemm_vnni_amx_bf16"]
    out.append(_line(not off, f"{r['config']} GEMMs with all dims >= 128 on the AMX rule",
                     f"{len(big) - len(off)} of {len(big)}" + (f" (not: {', '.join(off)})"
                                                             if off else "")))
    rated = [x for x in big if x.get("torch_bf16_gflops")]
    behind = [f"{x['kernel']} {x['gflops'] / x['torch_bf16_gflops']:.2f}x" for x in rated
              if x["gflops"] < x["torch_bf16_gflops"]]
    out.append(_line(bool(rated) and not behind,
                     "every such GEMM ahead of torch's bf16 matmul",
                     "all ahead" if rated and not behind else ", ".join(behind) or "no torch"))
    for x in big:
        tb = x.get("torch_bf16_gflops")
        pre = None
        if before:
            pre = next((y["gflops"] for y in before["rows"] if y["kernel"] == x["kernel"]), None)
        out.append(f"      {x['kernel']:<40} {x['gflops']:>8.0f} GFLOP/s"
                   f"  {100 * (x['frac_peak'] or 0):>3.0f}% peak"
                   + (f"  {x['gflops'] / tb:5.2f}x torch bf16" if tb else "")
                   + (f"  {x['gflops'] / pre:5.2f}x vdpbf16ps" if pre else ""))
    wrong = [x["kernel"] for x in r["rows"] if x["status"] != "ok"]
    if wrong:
        out.append(_line(False, "GEMM results", "WRONG: " + ", ".join(wrong)))
    return out


def bench_goal(r: dict, config: str = "mlperf") -> list[str]:
    ms = {row["name"]: row["ms_per_step"] for row in r["rows"]}
    ours, comp = ms.get("dlrm-tvm bf16"), ms.get("torch.compile bf16")
    if ours is None or comp is None:
        return [f"n/a   {config} step: a contender is missing (" + ", ".join(ms) + ")"]
    return [_line(ours < comp, f"{config} bf16 at {r.get('threads')} threads ahead of "
                  "torch.compile bf16", f"{ours:.1f} ms vs {comp:.1f} ms ({comp / ours:.2f}x)")]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    d = Path(argv[0])
    lines = pytest_goal(d)
    g = _load(d, "gemms-mlperf-amx.json")
    lines += gemm_goals(g, _load(d, "gemms-mlperf-vdpbf16ps.json")) if g else [
        "n/a   GEMMs: no gemms-mlperf-amx.json"]
    for config in ("mlperf", "small", "dcnv2"):
        b = _load(d, f"bench-{config}-amx.json")
        lines += bench_goal(b, config) if b else [
            f"n/a   {config} step: no bench-{config}-amx.json"]
    print("\n".join(lines))
    return 0 if all(not x.startswith("MISS") for x in lines) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
