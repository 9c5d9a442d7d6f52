"""Every kernel of graphs/ops.py, scheduled with the host's rule list, against its NumPy oracle.

Each test builds one PrimFunc for one shape, schedules it with ``rules_for(host)``, compiles it
with ``tvm.compile`` and runs it on seeded random data (never zeros). Outputs are poisoned with
NaN before the run and must come back fully written. Shapes include odd ones, so both the
specialised rules and the Fallback are exercised; the rule each kernel got is asserted.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.graphs.embedding_update import embedding_bag_update
from dlrm_tvm.schedules import rules_for, schedule_func
from dlrm_tvm.schedules.base import fp32_lanes

from dlrm_tvm.targets import resolve_target

TARGET = resolve_target("host").tvm_target()
RULES = rules_for(TARGET)
LANES = fp32_lanes(TARGET)
DEV = tvm.cpu()
U32 = 2.0**-24  # fp32 unit roundoff

EXPECTED_RULE = {
    "embedding_bag_fwd": "embedding_bag_balanced_prefetch",
    "embedding_bag_update": "embedding_update_bucketed_lookups",  # sgd
    "interaction_dot_fwd": "interaction_dot_fwd_rfactor",
    "interaction_dot_bwd": "interaction_dot_bwd_batched_gemm",
}


# ---------------------------------------------------------------- helpers


def build(func):
    """(compiled module, rule name) for one naive PrimFunc."""
    op = str(func.attrs["dlrm.op"])
    sched, rule = schedule_func(func, TARGET, RULES)
    if op in EXPECTED_RULE:
        assert rule == EXPECTED_RULE[op], f"{op} got rule {rule}"
    lib = tvm.compile(tvm.IRModule({"main": sched.with_attr("global_symbol", "main")}),
                      target=TARGET)
    return lib, rule


def run(lib, inputs, out_shapes):
    """Run with numpy ``inputs``; outputs start as NaN and are returned as numpy arrays."""
    tin = [tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in inputs]
    tout = [tvm.runtime.tensor(np.full(s, np.nan, np.float32), DEV) for s in out_shapes]
    lib["main"](*tin, *tout)
    outs = [t.numpy() for t in tout]
    for i, o in enumerate(outs):
        assert not np.isnan(o).any(), (
            f"output {i}: {int(np.isnan(o).sum())} of {o.size} elements never written"
        )
    return tin, outs


def run_inplace(lib, inputs):
    """Run an in-place kernel; returns the (updated) first argument."""
    tin = [tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in inputs]
    lib["main"](*tin)
    return tin[0].numpy()


def rng(*seed):
    return np.random.default_rng([20240611, *seed])


def rand(g, shape, scale=1.0):
    """Random fp32 with both signs, no exact zeros."""
    a = g.standard_normal(shape).astype(np.float32) * np.float32(scale)
    a[a == 0] = np.float32(0.5)
    return a


def assert_close(got, want, tol, what=""):
    """|got - want| <= tol elementwise (tol scalar or array); reports the worst element."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bad = ~(err <= tol)  # NaN counts as a mismatch
    if bad.any():
        i = np.unravel_index(int(np.argmax(err - tol)), err.shape)
        t = tol[i] if np.ndim(tol) else tol
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements differ; worst at {i}: "
            f"got {got[i]!r} want {want[i]!r} (|diff| {err[i]:.3g} > tol {t:.3g})"
        )


# ---------------------------------------------------------------- GEMM family

GEMM_SHAPES = [
    (7, 13, 5),  # odd everything: fallback
    (128, 368, 64),  # tiny's top MLP first layer: tiled
    (5, 9, 1),  # n = 1 (the logit layer): fallback
    (12, 20, 16),  # tiled, m a multiple of the tile rows
    (13, 17, 32),  # tiled, prime m (row tile shrinks to 1)
    (1, 33, 16),  # tiled, single row (the unit-row-loop branch)
    (9, 6, 24),  # multiple of 8 but not of 16: tiled on AVX2, fallback on AVX-512
    (6, 11, 12),  # not a multiple of any vector width: fallback
]


def _gemm_expected_rule(n, rule):
    return rule if n % LANES == 0 else "fallback"


def build_with(func, prefer):
    sched, rule = schedule_func(func, TARGET, rules_for(TARGET, prefer=[prefer]))
    lib = tvm.compile(tvm.IRModule({"main": sched.with_attr("global_symbol", "main")}),
                      target=TARGET)
    return lib, rule


@pytest.mark.parametrize("gemm_rule", ["gemm_packed_fp32", "gemm_tiled_fp32"])
@pytest.mark.parametrize("epilogue", ops.GEMM_EPILOGUES)
@pytest.mark.parametrize("a_layout", ["mk", "km"])
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES, ids=[f"{m}x{k}x{n}" for m, k, n in GEMM_SHAPES])
def test_gemm(m, k, n, a_layout, epilogue, gemm_rule):
    g = rng(1, m, k, n, ["mk", "km"].index(a_layout), ops.GEMM_EPILOGUES.index(epilogue))
    lib, rule = build_with(ops.gemm(m, k, n, a_layout, epilogue), gemm_rule)
    assert rule == _gemm_expected_rule(n, gemm_rule), f"n={n}, lanes={LANES}: rule {rule}"
    a = rand(g, (m, k) if a_layout == "mk" else (k, m))
    b = rand(g, (k, n))
    inputs = [a, b]
    extra = None
    if epilogue in ("bias", "bias_relu"):
        extra = rand(g, (n,))
        inputs.append(extra)
    elif epilogue == "relu_mask":
        extra = rand(g, (m, n))  # about half positive
        inputs.append(extra)
    _, (y,) = run(lib, inputs, [(m, n)])
    want = ref.gemm(a, b, a_layout, epilogue, extra)
    # fp32 accumulation of k products: the rounding error grows like sqrt(k) unit roundoffs of
    # |A||B| (+ |bias|) (observed <= 1.05x that on AVX2); 4x that is allowed
    mag = (np.abs(a) if a_layout == "mk" else np.abs(a).T).astype(np.float64) @ np.abs(b)
    if epilogue in ("bias", "bias_relu"):
        mag = mag + np.abs(extra)
    tol = 4 * np.sqrt(k + 2) * U32 * mag + 1e-7
    assert_close(y, want, tol, f"gemm {m}x{k}x{n} {a_layout} {epilogue}")
    if epilogue == "bias_relu":
        assert (y >= 0).all() and (y == 0).any() and (y > 0).any()
    if epilogue == "relu_mask":
        assert (y[extra <= 0] == 0).all()


@pytest.mark.parametrize("gemm_rule", ["gemm_packed_fp32", "gemm_tiled_fp32", "fallback"])
@pytest.mark.parametrize("epilogue", ["none", "relu_mask"])
@pytest.mark.parametrize("m,k,n", [(7, 13, 5), (128, 64, 368), (13, 17, 32), (20, 1, 16)],
                         ids=lambda v: str(v))
def test_gemm_b_transposed(m, k, n, epilogue, gemm_rule):
    """B given as [N, K] (the input gradient read straight from the stored weight)."""
    g = rng(11, m, k, n, ["none", "relu_mask"].index(epilogue))
    lib, rule = build_with(ops.gemm(m, k, n, "mk", epilogue, b_layout="nk"), gemm_rule)
    assert rule == (gemm_rule if n % LANES == 0 else "fallback")
    a, b = rand(g, (m, k)), rand(g, (n, k))
    extra = rand(g, (m, n)) if epilogue == "relu_mask" else None
    _, (y,) = run(lib, [a, b] + ([extra] if extra is not None else []), [(m, n)])
    want = ref.gemm(a, b, "mk", epilogue, extra, b_layout="nk")
    mag = np.abs(a).astype(np.float64) @ np.abs(b).T
    assert_close(y, want, 4 * np.sqrt(k + 2) * U32 * mag + 1e-7, f"gemm nk {m}x{k}x{n}")


def test_gemm_rule_choice_both_ways():
    """At least one tiled and one fallback GEMM on this host, whatever its vector width."""
    _, tiled = build(ops.gemm(16, 8, 2 * LANES, "mk", "bias"))
    _, fb = build(ops.gemm(16, 8, LANES + 1, "mk", "bias"))
    _, gemv = build(ops.gemm(16, 8, 1, "km", "none"))
    _, fb1 = build(ops.gemm(5, 8, 1, "km", "none"))
    assert tiled == "gemm_packed_fp32"  # the default first GEMM rule
    assert gemv == "gemv_vector"  # N = 1: the GEMV rule
    assert fb == "fallback" and fb1 == "fallback"


# ---------------------------------------------------------------- elementwise / small kernels



@pytest.mark.parametrize("m,n", [(7, 13), (128, 64), (1, 5), (300, 1)])
def test_colsum(m, n):
    g = rng(3, m, n)
    lib, rule = build(ops.colsum(m, n))
    assert rule == ("colsum_vector_blocks" if n % LANES == 0 else "fallback")
    x = rand(g, (m, n))
    _, (y,) = run(lib, [x], [(n,)])
    mag = np.abs(x).astype(np.float64).sum(0)
    assert_close(y, ref.colsum(x), m * U32 * 2 * mag + 1e-7, f"colsum {m}x{n}")


@pytest.mark.parametrize("shape", [(13,), (64,), (1,), (7, 5), (368, 64), (16, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_sgd_update(shape):
    g = rng(4, *shape)
    lib, _ = build(ops.sgd_update(shape))
    w = rand(g, shape)
    grad = rand(g, shape)
    lr = np.array([0.37], np.float32)
    got = run_inplace(lib, [w, grad, lr])
    want = ref.sgd_update(w, grad, lr[0])
    # (an FMA contraction may round once instead of twice)
    assert_close(got, want, 2e-7 * (np.abs(w) + np.abs(0.37 * grad)) + 1e-12, "sgd_update")
    assert not np.array_equal(got, w), "W did not change"


@pytest.mark.parametrize("m,n", [(7, 13), (128, 64), (1, 1)])
def test_relu_bwd(m, n):
    g = rng(5, m, n)
    lib, _ = build(ops.relu_bwd(m, n))
    dy = rand(g, (m, n))
    y = np.maximum(rand(g, (m, n)), 0)  # a ReLU output: zeros and positives
    if m * n > 1:
        assert (y == 0).any() and (y > 0).any()
    _, (dx,) = run(lib, [dy, y], [(m, n)])
    np.testing.assert_array_equal(dx, ref.relu_bwd(dy, y))


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("b", [1, 7, 128])
def test_sigmoid(b):
    g = rng(6, b)
    lib, _ = build(ops.sigmoid(b))
    z = rand(g, (b, 1), 4.0)
    _, (p,) = run(lib, [z], [(b,)])
    assert_close(p, ref.sigmoid(z), 2e-6, f"sigmoid b={b}")


@pytest.mark.parametrize("b,scale", [(1, None), (7, None), (128, None), (33, 0.25)])
def test_bce_loss(b, scale):
    g = rng(7, b)
    lib, _ = build(ops.bce_loss(b, scale))
    z = rand(g, (b, 1), 3.0)
    y = np.round(g.random(b)).astype(np.float32)
    if b > 1:
        y[0], y[1] = 0.0, 1.0
    _, (p, loss, dz) = run(lib, [z, y], [(b,), (1,), (b, 1)])
    wp, wl, wdz = ref.bce_loss(z, y, scale)
    assert_close(p, wp, 2e-6, "p")
    assert_close(loss, wl, 1e-5 * abs(float(wl[0])) + 1e-6, "loss")
    s = 1.0 / b if scale is None else scale
    assert_close(dz, wdz, 2e-6 * s, "dz")


def test_bce_loss_log_clamp():
    """Saturated wrong predictions: both logs clamp at -100 as torch's BCELoss does."""
    b = 4
    lib, _ = build(ops.bce_loss(b))
    z = np.array([[200.0], [-200.0], [150.0], [-150.0]], np.float32)
    y = np.array([0.0, 1.0, 1.0, 0.0], np.float32)  # first two saturated wrong, last two right
    _, (p, loss, dz) = run(lib, [z, y], [(b,), (1,), (b, 1)])
    wp, wl, wdz = ref.bce_loss(z, y)
    assert np.isfinite(loss).all()
    assert_close(loss, wl, 1e-5 * abs(float(wl[0])), "clamped loss")
    assert abs(float(loss[0]) - 50.0) < 1e-3  # (100 + 100 + 0 + 0) / 4
    assert_close(p, wp, 1e-7, "p")
    assert_close(dz, wdz, 1e-7, "dz")


# ---------------------------------------------------------------- interaction


@pytest.mark.parametrize("b,t,d", [(7, 3, 5), (16, 26, 16), (1, 1, 8)])
def test_stack_features(b, t, d):
    g = rng(8, b, t, d)
    lib, _ = build(ops.stack_features(b, t, d))
    x, e = rand(g, (b, d)), rand(g, (b, t, d))
    _, (tc,) = run(lib, [x, e], [(b, t + 1, d)])
    np.testing.assert_array_equal(tc, ref.stack_features(x, e))


def _pad(w, align=16):
    return -(-w // align) * align


# (b, f, d, itself, width_padded): F counts the bottom output, so F = T + 1
DOT_CASES = [
    (7, 5, 7, False, None),  # odd: P=10, width 17 -> 32 (padding written as zeros)
    (7, 5, 7, True, None),  # P=15, width 22 -> 32
    (16, 27, 16, False, None),  # the tiny preset: P=351, width 367 -> 368
    (4, 3, 5, False, 0),  # width_padded == true width (no padding)
    (3, 2, 16, True, 0),  # F=2 with the diagonal: P=3
    (1, 2, 3, False, None),  # one pair, one sample
]


def _dot_ids():
    return [f"b{b}-f{f}-d{d}-{'self' if s else 'noself'}-{'exact' if w == 0 else 'pad'}"
            for b, f, d, s, w in DOT_CASES]


def _dot_width(f, d, itself, wp):
    P = len(ops.pair_tables(f, itself)[0])
    w = d + P
    return P, (w if wp == 0 else _pad(w))


@pytest.mark.parametrize("b,f,d,itself,wp", DOT_CASES, ids=_dot_ids())
def test_interaction_dot_fwd(b, f, d, itself, wp):
    g = rng(9, b, f, d, int(itself))
    P, width = _dot_width(f, d, itself, wp)
    func = ops.interaction_dot_fwd(b, f, d, itself, width)
    if not any(d % v == 0 and d // v >= 2 for v in (LANES, LANES // 2)):
        # the rfactor rule needs >= 2 whole vectors along D: the fallback takes it
        sched, rule = schedule_func(func, TARGET, RULES)
        assert rule == "fallback"
        lib = tvm.compile(tvm.IRModule({"main": sched.with_attr("global_symbol", "main")}),
                          target=TARGET)
    else:
        lib, _ = build(func)
    li, lj, _ = ops.pair_tables(f, itself)
    tc = rand(g, (b, f, d))
    _, (r,) = run(lib, [tc, np.array(li, np.int32), np.array(lj, np.int32)], [(b, width)])
    want = ref.interaction_dot_fwd(tc, itself, width)
    tol = np.zeros(width)
    tol[d : d + P] = 1e-6 * d * np.max(np.abs(tc)) ** 2
    assert_close(r, want, tol[None, :] + 1e-7, "interaction_dot_fwd")
    np.testing.assert_array_equal(r[:, :d], tc[:, 0, :])
    assert (r[:, d + P :] == 0).all(), "padding columns must be zero"


@pytest.mark.parametrize("b,f,d,itself,wp", DOT_CASES, ids=_dot_ids())
def test_interaction_dot_bwd(b, f, d, itself, wp):
    g = rng(10, b, f, d, int(itself))
    P, width = _dot_width(f, d, itself, wp)
    lib, _ = build(ops.interaction_dot_bwd(b, f, d, itself, width))
    _, _, pidx = ops.pair_tables(f, itself)
    dr = rand(g, (b, width))  # padding columns carry junk: it must be ignored
    tc = rand(g, (b, f, d))
    _, (dx, demb) = run(lib, [dr, tc, np.array(pidx, np.int32)], [(b, d), (b, f - 1, d)])
    wdx, wdemb = ref.interaction_dot_bwd(dr, tc, itself)
    tol = 2e-6 * f * np.max(np.abs(dr)) * np.max(np.abs(tc)) + 1e-7
    assert_close(dx, wdx, tol, "dx")
    assert_close(demb, wdemb, tol, "demb")


@pytest.mark.parametrize("b,t,d,wp", [(7, 3, 5, None), (16, 26, 16, None), (4, 2, 8, 0),
                                      (1, 1, 3, None)])
def test_interaction_cat_fwd(b, t, d, wp):
    g = rng(11, b, t, d)
    w = (t + 1) * d
    width = w if wp == 0 else _pad(w)
    lib, _ = build(ops.interaction_cat_fwd(b, t, d, width))
    x, e = rand(g, (b, d)), rand(g, (b, t, d))
    _, (r,) = run(lib, [x, e], [(b, width)])
    np.testing.assert_array_equal(r, ref.interaction_cat_fwd(x, e, width))


@pytest.mark.parametrize("b,t,d,wp", [(7, 3, 5, None), (16, 26, 16, None), (4, 2, 8, 0),
                                      (1, 1, 3, None)])
def test_interaction_cat_bwd(b, t, d, wp):
    g = rng(12, b, t, d)
    w = (t + 1) * d
    width = w if wp == 0 else _pad(w)
    lib, _ = build(ops.interaction_cat_bwd(b, t, d, width))
    dr = rand(g, (b, width))
    _, (dx, demb) = run(lib, [dr], [(b, d), (b, t, d)])
    wdx, wdemb = ref.interaction_cat_bwd(dr, t, d)
    np.testing.assert_array_equal(dx, wdx)
    np.testing.assert_array_equal(demb, wdemb)


# ---------------------------------------------------------------- embedding bags


def _bags(g, table_rows, b, max_bag, empty_frac=0.25):
    """Random table-major bags with empty bags and duplicates inside and across bags."""
    nt = len(table_rows)
    sizes = g.integers(0, max_bag + 1, size=nt * b)
    sizes[g.random(nt * b) < empty_frac] = 0
    sizes[0] = 0  # always at least one empty bag ...
    sizes[-1] = max(sizes[-1], 3)  # ... and one with several lookups
    offsets = np.zeros(nt * b + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    idx = []
    for t in range(nt):
        for s in range(b):
            n = sizes[t * b + s]
            # small tables and a bias to low rows make duplicates frequent
            hi = min(table_rows[t], 4) if g.random() < 0.5 else table_rows[t]
            idx.append(g.integers(0, hi, size=n))
    indices = np.concatenate(idx).astype(np.int64)
    # force a duplicate inside the last bag and one across bags of the same table
    lo = offsets[-2]
    indices[lo + 1] = indices[lo]
    t_last = nt - 1
    nonempty = [p for p in range(t_last * b, (t_last + 1) * b - 1) if sizes[p] > 0]
    if nonempty:
        indices[offsets[nonempty[0]]] = indices[lo]
    return indices, offsets


def _row_offsets(table_rows):
    return np.concatenate([[0], np.cumsum(table_rows)[:-1]]).astype(np.int64)


def _has_duplicates(indices, offsets, row_off, b):
    nt = len(row_off)
    rows = []
    within = False
    for t in range(nt):
        for s in range(b):
            r = indices[offsets[t * b + s] : offsets[t * b + s + 1]] + row_off[t]
            within |= len(np.unique(r)) < len(r)
            rows.extend(r.tolist())
    across = len(set(rows)) < len(rows)
    return within, across


EMB_CASES = [
    ((11, 3, 17, 1), 6, 16, 5),  # odd table sizes, a one-row table, vector-width rows
    ((5, 7), 4, 5, 4),  # odd D
    ((1000,) * 3, 16, 16, 3),
    ((2,), 3, 1, 6),  # D = 1, one tiny table: heavy duplication
]


def _emb_ids():
    return [f"T{len(r)}-B{b}-D{d}-L{L}" for r, b, d, L in EMB_CASES]


@pytest.mark.parametrize("table_rows,b,d,max_bag", EMB_CASES, ids=_emb_ids())
def test_embedding_bag_fwd(table_rows, b, d, max_bag):
    g = rng(13, len(table_rows), b, d, max_bag)
    row_off = _row_offsets(table_rows)
    lib, _ = build(ops.embedding_bag_fwd(b, tuple(int(x) for x in row_off), d))
    indices, offsets = _bags(g, table_rows, b, max_bag)
    sizes = np.diff(offsets)
    assert (sizes == 0).any() and (sizes > 1).any()
    within, across = _has_duplicates(indices, offsets, row_off, b)
    assert within and across
    w = rand(g, (sum(table_rows), d))
    _, (pooled,) = run(lib, [w, indices, offsets, row_off], [(b, len(table_rows), d)])
    want = ref.embedding_bag_fwd(w, indices, offsets, row_off, b)
    tol = 1e-6 * max_bag * np.max(np.abs(w)) + 1e-7
    assert_close(pooled, want, tol, "embedding_bag_fwd")
    empty = (sizes == 0).reshape(len(table_rows), b)
    assert (pooled.transpose(1, 0, 2)[empty] == 0).all(), "empty bags must pool to zero"


def test_embedding_bag_fwd_all_empty():
    """nnz = 0: every bag empty, every output zero (and written)."""
    table_rows, b, d = (4, 6), 3, 8
    row_off = _row_offsets(table_rows)
    lib, _ = build(ops.embedding_bag_fwd(b, tuple(int(x) for x in row_off), d))
    w = rand(rng(14), (sum(table_rows), d))
    indices = np.zeros(0, np.int64)
    offsets = np.zeros(len(table_rows) * b + 1, np.int64)
    _, (pooled,) = run(lib, [w, indices, offsets, row_off], [(b, len(table_rows), d)])
    assert (pooled == 0).all()


@pytest.mark.parametrize("table_rows,b,d,max_bag", EMB_CASES, ids=_emb_ids())
def test_embedding_bag_update_sgd(table_rows, b, d, max_bag):
    """The fused backward + SGD (tests/test_embedding.py covers the optimizers, storages and
    thread counts): every looked-up row steps once by its coalesced gradient."""
    g = rng(15, len(table_rows), b, d, max_bag)
    nt = len(table_rows)
    row_off = _row_offsets(table_rows)
    indices, offsets = _bags(g, table_rows, b, max_bag)
    within, across = _has_duplicates(indices, offsets, row_off, b)
    assert within and across
    w = rand(g, (sum(table_rows), d))
    grad = rand(g, (b, nt, d))
    lr = np.array([0.3], np.float32)
    want, _ = ref.embedding_bag_update(w, indices, offsets, row_off, grad, lr[0])
    lib, _ = build(embedding_bag_update(b, nt, d))
    got = run_inplace(lib, [w, indices, offsets, row_off, grad, lr])
    touched = np.zeros(w.shape[0], bool)
    touched[indices + row_off[np.repeat(np.arange(nt * b), np.diff(offsets)) // b]] = True
    scale = np.maximum(1.0, np.abs(want))
    assert_close(got, want, 1e-6 * scale * max_bag, "embedding_bag_update")
    np.testing.assert_array_equal(got[~touched], w[~touched])  # untouched rows: bit-identical
    assert (got[touched] != w[touched]).any()


def test_a_rule_that_raises_is_skipped_not_fatal(caplog):
    from dlrm_tvm.schedules import Rule

    class Broken(Rule):
        name = "broken"
        ops = ("gemm",)

        def apply(self, func, target, tunable=False):
            raise RuntimeError("boom")

    func, rule = schedule_func(ops.gemm(16, 8, 16), TARGET, [Broken(), *RULES])
    assert rule == "gemm_packed_fp32"  # the next rule in the list took it
    assert "broken raised" in caplog.text
