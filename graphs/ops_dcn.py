"""The DCN v2 cross layers' elementwise kernels (DLRM-DCNv2, interaction "dcn"): plain TIR
PrimFuncs as in graphs/ops.py, NumPy oracles of the same names in graphs/reference.py.

A cross layer l of width N (the padded interaction width) and rank r, on x0 = [bottom output,
pooled rows] [B, N] (``ops.interaction_cat_fwd``), with the layer's parameters u = U_l^T
[N, r], v = V_l^T [r, N] and b [N] (``ModelConfig.mlp_param_specs``):

  forward    u_l = x_l @ u                [B, r]   ops.gemm, epilogue "none"
             z_l = u_l @ v + b            [B, N]   ops.gemm, epilogue "bias", fp32 out
             x_{l+1} = x0 * z_l + x_l              cross_fwd (here)
  backward   given dx_{l+1}:
             dz = dx_{l+1} * x0; dx0 += dx_{l+1} * z_l                cross_bwd (here)
             db = colsum(dz); dv = u_l^T dz; du_l = dz @ v^T          ops.colsum, ops.gemm
             du = x_l^T du_l; g_l = du_l @ u^T                        ops.gemm
             dx_l = dx_{l+1} + g_l                (formed by the next cross_bwd)
  the input  dx0 + dx_1 + g_0, split into the bottom output's gradient [B, D] and d_pooled
             [B, T, D]                                                cross_input_bwd (here)

Residuals (x0, x_l, z_l, the gradients) stay fp32; ``act`` is the GEMMs' operand dtype
(bfloat16 in bf16 training), in which the kernels also write the GEMMs' inputs (x_{l+1}, dz),
the cast fused into the elementwise pass. Each of cross_fwd and cross_bwd is one loop nest over
[B, N] writing all its outputs (blocks named "Y"/"dX" + "_v<i>", one per output).
"""

from __future__ import annotations

from dlrm_tvm.graphs.common import F32, tag_op
from dlrm_tvm.graphs.ops import convert
from tvm import te, tirx


def cross_fwd(b: int, n: int, act: str = F32, keep_f32: bool = True) -> tirx.PrimFunc:
    """y = x0 * z + xl over [B, N] (x0, z, xl fp32).

    Outputs, in order: y fp32 (when ``keep_f32``, or always when ``act`` is fp32), y in
    ``act`` (only when act is not fp32: the next GEMM's input). ``keep_f32=False`` is for the
    last layer in bf16, whose output only feeds the top MLP."""
    if act == F32:
        keep_f32 = True
    x0 = te.placeholder((b, n), F32, name="x0")
    z = te.placeholder((b, n), F32, name="z")
    xl = te.placeholder((b, n), F32, name="xl")

    def body(i, j):
        y = x0[i, j] * z[i, j] + xl[i, j]
        return ([y] if keep_f32 else []) + ([convert(y, act)] if act != F32 else [])

    outs = te.compute((b, n), body, name="Y")
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    f = te.create_prim_func([x0, z, xl, *outs])
    return tag_op(f, "cross_fwd", act=act, keep_f32=int(keep_f32))


def cross_bwd(b: int, n: int, act: str = F32, has_g: bool = True,
              has_acc: bool = True) -> tirx.PrimFunc:
    """One cross layer's elementwise backward over [B, N].

    Inputs, in order: a (fp32: dx_{l+2}, or dx_L for the last layer), g (fp32, when
    ``has_g``: g_{l+1} = du_{l+1} @ u_{l+1}^T), x0, z_l (fp32), acc (fp32, when ``has_acc``:
    the x0 gradient summed so far). With dxn = a + g (or a):
    outputs dxn (fp32, only when ``has_g``: the next layer's a), dz = dxn * x0 (``act``: the
    GEMMs' operand), acc' = acc + dxn * z_l (or dxn * z_l) fp32."""
    a = te.placeholder((b, n), F32, name="a")
    g = te.placeholder((b, n), F32, name="g")
    x0 = te.placeholder((b, n), F32, name="x0")
    z = te.placeholder((b, n), F32, name="z")
    acc = te.placeholder((b, n), F32, name="acc")

    def body(i, j):
        dxn = a[i, j] + g[i, j] if has_g else a[i, j]
        s = dxn * z[i, j]
        new_acc = acc[i, j] + s if has_acc else s
        return ([dxn] if has_g else []) + [convert(dxn * x0[i, j], act), new_acc]

    outs = te.compute((b, n), body, name="dX")
    ins = [a] + ([g] if has_g else []) + [x0, z] + ([acc] if has_acc else [])
    f = te.create_prim_func([*ins, *outs])
    return tag_op(f, "cross_bwd", act=act, has_g=int(has_g), has_acc=int(has_acc))


def cross_input_bwd(b: int, t: int, d: int, n: int) -> tirx.PrimFunc:
    """The gradient of x0 = [bottom output, pooled rows] (x0 [B, N], N >= (T+1)D padded):
    s = acc + a + g (fp32 [B, N] each: the summed x0 terms, dx_1, g_0), split into
    dx [B, D] = s[:, :D] (the bottom output's) and demb [B, T, D] = s[:, D + t*D + k]
    (d_pooled). Blocks "dx" and "demb"; the padded columns are never read."""
    acc = te.placeholder((b, n), F32, name="acc")
    a = te.placeholder((b, n), F32, name="a")
    g = te.placeholder((b, n), F32, name="g")

    def s(i, c):
        return acc[i, c] + a[i, c] + g[i, c]

    dx = te.compute((b, d), lambda i, k: s(i, k), name="dx")
    demb = te.compute((b, t, d), lambda i, q, k: s(i, d + q * d + k), name="demb")
    return tag_op(te.create_prim_func([acc, a, g, dx, demb]), "cross_input_bwd")
