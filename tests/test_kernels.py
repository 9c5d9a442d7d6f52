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


def test_bce_loss_has_no_clamp_that_hides_divergence():
    """Saturated wrong predictions cost |z| (BCE on the logits), not a capped 100; a
    non-finite logit gives a non-finite loss, so the trainer's check sees a diverging run."""
    b = 4
    lib, _ = build(ops.bce_loss(b))
    z = np.array([[200.0], [-300.0], [150.0], [-150.0]], np.float32)
    y = np.array([0.0, 1.0, 1.0, 0.0], np.float32)  # first two saturated wrong, last two right
    _, (p, loss, dz) = run(lib, [z, y], [(b,), (1,), (b, 1)])
    wp, wl, wdz = ref.bce_loss(z, y)
    assert_close(loss, wl, 1e-5 * abs(float(wl[0])), "loss")
    assert abs(float(loss[0]) - 125.0) < 1e-3  # (200 + 300 + 0 + 0) / 4
    assert_close(p, wp, 1e-7, "p")
    assert_close(dz, wdz, 1e-7, "dz")
    for bad in (np.inf, -np.inf):  # (a NaN logit is NaN everywhere, p included)
        z2 = z.copy()
        z2[2, 0] = bad
        loss2 = tvm.runtime.tensor(np.zeros(1, np.float32), DEV)  # poisoned finite
        lib["main"](*(tvm.runtime.tensor(a, DEV) for a in (z2, y)),
                    tvm.runtime.tensor(np.zeros(b, np.float32), DEV), loss2,
                    tvm.runtime.tensor(np.zeros((b, 1), np.float32), DEV))
        assert not np.isfinite(loss2.numpy()[0]), bad


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


# ---------------------------------------------------------------- dense Adagrad (rwsadagrad MLP)

ADAGRAD_SHAPES = [(13,), (1,), (7, 5), (368, 64), (9001,)]  # 23552 and 9001: a short last chunk


def _adagrad_grad(g, shape):
    """A random gradient with |g| >= 0.05: every element's weight and accumulator must move."""
    x = rand(g, shape)
    return np.where(np.abs(x) < 0.05, np.copysign(np.float32(0.05), x), x).astype(np.float32)


def _adagrad_tol(w, acc, grad, lr, acc_new):
    """NumPy rounds g*g, the division and lr*step separately; the kernel may fuse (FMA): a few
    unit roundoffs of the magnitudes involved (observed <= 2.6 on Zen 4)."""
    step = np.abs(lr * grad.astype(np.float64)) / np.sqrt(acc_new.astype(np.float64))
    tol_acc = 4 * U32 * (np.abs(acc).astype(np.float64) + grad.astype(np.float64) ** 2)
    return 8 * U32 * (np.abs(w).astype(np.float64) + step), tol_acc


@pytest.mark.parametrize("shape", ADAGRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_adagrad_update(shape):
    """Dense Adagrad in place: S += g^2; w -= lr * g / (sqrt(S) + eps), over three steps, each
    against the oracle from the kernel's previous state; every element of W and S moves."""
    g = rng(16, *shape)
    lib, rule = build(ops.adagrad_update(shape))
    assert rule == "split_sgd_parallel_chunks"
    w = rand(g, shape)
    acc = g.uniform(0.01, 3.0, shape).astype(np.float32)  # a sum of squares: positive
    W, S = tvm.runtime.tensor(w, DEV), tvm.runtime.tensor(acc, DEV)
    for step, lr in enumerate((0.07, 0.3, 0.01)):
        grad = _adagrad_grad(g, shape)
        lib["main"](W, S, tvm.runtime.tensor(grad, DEV),
                    tvm.runtime.tensor(np.array([lr], np.float32), DEV))
        got_w, got_acc = W.numpy(), S.numpy()
        want_w, want_acc = ref.adagrad_update(w, acc, grad, lr)
        tol_w, tol_acc = _adagrad_tol(w, acc, grad, lr, want_acc)
        assert_close(got_acc, want_acc, tol_acc, f"adagrad acc, step {step}")
        assert_close(got_w, want_w, tol_w, f"adagrad w, step {step}")
        assert (got_acc != acc).all() and (got_w != w).all(), "an element was not updated"
        w, acc = got_w, got_acc


@pytest.mark.parametrize("shape", ADAGRAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_split_adagrad_is_bit_exact_fp32_adagrad(shape):
    """The Split-SGD-BF16 variant (hi bf16 + lo uint16 master) steps bit for bit as the fp32
    kernel (the same arithmetic on the recombined master); hi stays the master's upper half."""
    import ml_dtypes
    g = rng(17, *shape)
    split, rule = build(ops.adagrad_update(shape, split=True))
    assert rule == "split_sgd_parallel_chunks"
    plain, _ = build(ops.adagrad_update(shape))
    w = rand(g, shape)
    acc = g.uniform(0.01, 3.0, shape).astype(np.float32)
    hi, lo = ref.split_fp32(w)
    H, L = tvm.runtime.tensor(hi.view(ml_dtypes.bfloat16), DEV), tvm.runtime.tensor(lo, DEV)
    S1, S2 = tvm.runtime.tensor(acc, DEV), tvm.runtime.tensor(acc, DEV)
    W = tvm.runtime.tensor(w, DEV)
    for step in range(5):
        grad = tvm.runtime.tensor(_adagrad_grad(g, shape), DEV)
        lr = tvm.runtime.tensor(np.array([0.05 * (step + 1)], np.float32), DEV)
        split["main"](H, L, S1, grad, lr)
        plain["main"](W, S2, grad, lr)
        master = ref.combine_fp32(H.numpy().view(np.uint16), L.numpy())
        assert np.array_equal(master.view(np.uint32), W.numpy().view(np.uint32)), f"step {step}"
        assert np.array_equal(S1.numpy().view(np.uint32), S2.numpy().view(np.uint32)), step
    assert np.array_equal(H.numpy().view(np.uint16), ref.split_fp32(W.numpy())[0])
    assert (W.numpy() != w).all()


# ---------------------------------------------------------------- bf16 casts
# The oracle: round to nearest, ties to even, on the bits (NaN aside). No avx512_bf16 needed:
# TVM legalises bf16 casts to integer code on every x86 target.


bf16_rne_bits = ref.bf16_rne_bits


def _fp32_bit_patterns(g, shape):
    """fp32 values from their bits: every exponent (subnormals, infinities, values that round
    to infinity) but no NaN; a quarter of them exact ties (low half 0x8000)."""
    b = g.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    nan = ((b & 0x7F800000) == 0x7F800000) & ((b & 0x007FFFFF) != 0)
    b[nan] &= np.uint32(0xFF7FFFFF)  # exponent 254: a large finite value instead
    tie = g.random(shape) < 0.25
    b[tie] = (b[tie] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    return b.view(np.float32)


CAST_SHAPES = [(7, 13), (128, 64), (1,), (3, 5, 7), (1000, 3)]


@pytest.mark.parametrize("shape", CAST_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cast_fp32_to_bf16_rounds_to_nearest_even(shape):
    import ml_dtypes
    g = rng(18, *shape)
    lib, _ = build(ops.cast(shape, "float32", "bfloat16"))
    x = _fp32_bit_patterns(g, shape)
    want = bf16_rne_bits(x)
    np.testing.assert_array_equal(want, x.astype(ml_dtypes.bfloat16).view(np.uint16))  # oracle
    y = tvm.runtime.tensor(np.full(shape, np.nan, np.float32).astype(ml_dtypes.bfloat16), DEV)
    lib["main"](tvm.runtime.tensor(x, DEV), y)
    got = y.numpy().view(np.uint16)
    assert not np.isnan(y.numpy().astype(np.float32)).any(), "an element was never written"
    bad = got != want
    assert not bad.any(), (f"{int(bad.sum())} of {got.size} differ, first input "
                           f"{x[bad][0].view(np.uint32):#010x}: got {got[bad][0]:#06x} "
                           f"want {want[bad][0]:#06x}")


def test_cast_fp32_to_bf16_edge_values():
    import ml_dtypes
    bits = np.array([
        0x3F808000, 0x3F818000,  # ties: down to even 0x3F80, up to even 0x3F82
        0x3F807FFF, 0x3F808001,  # just below / above a tie
        0x7F7FFFFF, 0xFF7FFFFF,  # the largest finite values round to +-inf
        0x7F7F7FFF,  # ... unless below the tie
        0x7F800000, 0xFF800000, 0x00000000, 0x80000000,  # +-inf, +-0
        0x00000001, 0x007FFFFF, 0x00008000, 0x00018000, 0x80018000,  # subnormals, ties
        0xBF7FFFFF,  # -0.99999994 rounds up in magnitude to -1.0
    ], np.uint32)
    x = bits.view(np.float32)
    lib, _ = build(ops.cast(x.shape, "float32", "bfloat16"))
    y = tvm.runtime.tensor(np.full(x.shape, np.nan, np.float32).astype(ml_dtypes.bfloat16), DEV)
    lib["main"](tvm.runtime.tensor(x, DEV), y)
    got = y.numpy().view(np.uint16)
    want = np.array([0x3F80, 0x3F82, 0x3F80, 0x3F81, 0x7F80, 0xFF80, 0x7F7F, 0x7F80, 0xFF80,
                     0x0000, 0x8000, 0x0000, 0x0080, 0x0000, 0x0002, 0x8002, 0xBF80], np.uint16)
    np.testing.assert_array_equal(bf16_rne_bits(x), want)
    assert [hex(v) for v in got] == [hex(v) for v in want]


def test_cast_fp32_to_bf16_keeps_nan():
    """TVM's rounding alone adds the bias to NaN payloads (0x7FFFFFFF -> -0.0, 0x7F800001 ->
    +inf); ops.convert keeps every NaN a NaN, so a diverged value cannot vanish in a cast."""
    import ml_dtypes
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F80FFFF],
                    np.uint32)
    x = bits.view(np.float32)
    lib, _ = build(ops.cast(x.shape, "float32", "bfloat16"))
    y = tvm.runtime.tensor(np.zeros(x.shape, ml_dtypes.bfloat16), DEV)
    lib["main"](tvm.runtime.tensor(x, DEV), y)
    got = y.numpy().astype(np.float32)
    assert np.isnan(got).all(), [hex(v) for v in y.numpy().view(np.uint16)]


@pytest.mark.parametrize("shape", [(256, 256), (7, 13), (1,)], ids=lambda s: "x".join(map(str, s)))
def test_cast_bf16_to_fp32_is_exact(shape):
    """bf16 -> fp32 is exact: the bits shifted up by 16, NaN payloads included. (256, 256):
    every bf16 bit pattern."""
    import ml_dtypes
    g = rng(19, *shape)
    n = int(np.prod(shape))
    hb = (np.arange(n) if n == 65536 else g.integers(0, 2**16, n)).astype(np.uint16)
    hb = hb.reshape(shape)
    lib, _ = build(ops.cast(shape, "bfloat16", "float32"))
    # poison: a NaN with nonzero low bits, which no exact result has
    y = tvm.runtime.tensor(np.full(shape, 0x7FBADBAD, np.uint32).view(np.float32), DEV)
    lib["main"](tvm.runtime.tensor(hb.view(ml_dtypes.bfloat16), DEV), y)
    got = y.numpy().view(np.uint32)
    want = hb.astype(np.uint32) << 16
    bad = got != want
    assert not bad.any(), (f"{int(bad.sum())} of {got.size} differ, first input "
                           f"{hb[bad][0]:#06x}: got {got[bad][0]:#010x}")


@pytest.mark.parametrize("m,k,k_pad", [(7, 13, 16), (64, 13, 16), (1, 5, 8), (3, 1, 2)],
                         ids=lambda v: str(v))
def test_cast_pad(m, k, k_pad):
    """The dense input cast to bf16 (nearest even) and zero-padded to k_pad columns."""
    import ml_dtypes
    g = rng(20, m, k, k_pad)
    lib, _ = build(ops.cast_pad(m, k, k_pad))
    x = rand(g, (m, k), 3.0)
    tie = g.random((m, k)) < 0.25  # exact ties, as in the bit-pattern test
    xb = x.view(np.uint32)
    xb[tie] = (xb[tie] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    y = tvm.runtime.tensor(np.full((m, k_pad), np.nan, np.float32).astype(ml_dtypes.bfloat16),
                           DEV)
    lib["main"](tvm.runtime.tensor(x, DEV), y)
    got = y.numpy().view(np.uint16)
    np.testing.assert_array_equal(got[:, :k], bf16_rne_bits(x))
    assert (got[:, k:] == 0).all(), "padding must be +0.0 (bits 0), and written"
