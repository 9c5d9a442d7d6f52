"""The DLRM training graph in Relax, as functions the runtime calls.

Four named parts as in torchrec: sparse (embedding bags), dense (bottom MLP), interaction
(dot, cat, or dcn: DLRM-DCNv2's low-rank cross layers on the concatenation), over (top MLP),
plus the loss. The module exports (``DLRMGraph.build(parts)``:
"sparse" the embedding functions, "dense" the others; one rank builds both into one module, a
rank of a distributed run builds each part apart):

  embedding_forward(tables, indices, offsets) -> pooled [B, T, D]                  (sparse)
  dense_forward_backward(dense [B, Din], pooled [B, T, D], labels [B], *mlp_params)
      -> (loss [1], p [B], *mlp_grads, d_pooled [B, T, D])                          (dense)
  dense_update(*mlp_params, *mlp_grads, lr [1]) -> mlp_params        (in place)    (dense)
  embedding_update(tables, indices, offsets, d_pooled, lr [1]) -> tables (in place: the fused
      sparse backward + optimizer step of graphs/embedding_update.py)               (sparse)
  predict(dense, pooled, *mlp_params) -> p [B]                                      (dense)

A training step (runtime/trainer.py ``Trainer.step``) calls embedding_forward,
dense_forward_backward, embedding_update, then dense_update; predict is for evaluation. No
function moves data between ranks itself: the runtime does every exchange, between the calls,
or, in a dense part built with ``hooks=True`` (a rank of a distributed run; HOOK_* below), from
inside dense_forward_backward, which then calls back into the runtime where the pooled rows are
needed, as each layer's gradients are final and once d_pooled is, and returns after d_pooled one
token [1] per gradient-ready and d_pooled-ready call.

Every op is a ``call_tir`` to a kernel of ``graphs/ops.py`` (or of its neighbours
``ops_interaction.py``, ``ops_dcn.py`` and ``ops_optim.py``); the backward is written out by
hand (forward, input gradient, weight gradient per layer, as the SC20 paper does), because
Relax's ``Gradient`` does not differentiate ``call_tir`` and the embedding backward must stay
sparse.

MLP parameters, in order (``ModelConfig.mlp_param_specs``): for each bottom then each top
layer, ``Wt`` [in, out] and ``b`` [out]. The first top layer's ``Wt`` has
``interaction_width_padded`` rows; rows past the true interaction width multiply zero columns
and stay zero. Interaction "dcn": the cross layers' ``cross{l}_u`` [Np, r], ``cross{l}_v``
[r, Np], ``cross{l}_b`` [Np] come between the bottom and the top layers (entries past the true
width stay zero likewise); each layer is two GEMMs on the MLPs' kernels and rules
(x_l @ u, then @ v + b in fp32) and an elementwise x0 * z + x_l (ops_dcn.py, which lists the
backward; docs/dcn.md).

Precision "bf16": MLP weights, biases and activations are bfloat16 in the GEMMs (fp32 sums,
fp32 loss, fp32 gradients out of the GEMMs); the interaction runs in fp32 on the fp32 pooled
embeddings. Weights and tables are Split-SGD-BF16: the bf16 tensors above are the high halves
of the fp32 masters, and the update functions take the low halves (uint16) beside them:
  dense_update(*mlp_hi, *mlp_lo, *mlp_grads, lr)
  embedding_update(tables, indices, offsets, d_pooled, lr)
where a bf16 table is [rows, 2D]: each row's bf16 high halves, then its uint16 low halves
(one place per row; embedding_forward reads the first D)

Optimizer "rwsadagrad" (the reference's): the update functions also take the optimizer state,
in place, after the parameters: one fp32 accumulator per MLP parameter (dense Adagrad) and one
per table row (row-wise sparse Adagrad):
  dense_update(*mlp_params, [*mlp_lo,] *mlp_acc, *mlp_grads, lr)
  embedding_update(tables, row_acc [rows], indices, offsets, d_pooled, lr)
Optimizer "adagrad" (exact Adagrad, eps 1e-8: docs/adagrad.md): the same signatures, the dense
states as above (the same kernel, its eps) and the tables' state of their shape, fp32 in both
precisions (bf16: the tables' rows are Split-SGD rows, the state is not split):
  embedding_update(tables, row_acc [rows, D], indices, offsets, d_pooled, lr)
"""

from __future__ import annotations

import numpy as np
import tvm
from dlrm_tvm.graphs import ops
from dlrm_tvm.graphs import ops_dcn as dcn
from dlrm_tvm.graphs import ops_interaction as inter
from dlrm_tvm.graphs import ops_optim as optim
from dlrm_tvm.graphs.common import EXACT_ADAGRAD_EPS, F32
from dlrm_tvm.graphs.embedding_update import embedding_bag_update
from tvm import relax, tirx

from dlrm_tvm.config import OPTIMIZERS, ModelConfig

# With ``hooks=True`` (a rank of a distributed run) dense_forward_backward calls back into the
# runtime mid-function: HOOK_WAIT_POOLED(pooled) -> pooled after the bottom MLP (the runtime
# waits for the pooled rows' exchange and fills the tensor: the exchange overlaps the bottom
# MLP), HOOK_GRAD_READY(layer, *grads) -> token as each layer's gradients are final (an MLP
# layer's (dWt, db), a DCN cross layer's (du, dv, db); layers numbered bottom, cross, top; the
# runtime starts their allreduce while the next layer's backward runs), and
# HOOK_DPOOLED_READY(d_pooled) -> token once the interaction's backward has it (the runtime
# sends it to the table owners during the bottom MLP's backward). The tokens are extra outputs
# after d_pooled, so that nothing removes the calls.
HOOK_WAIT_POOLED = "dlrm_tvm.wait_pooled"
HOOK_GRAD_READY = "dlrm_tvm.grad_ready"
HOOK_DPOOLED_READY = "dlrm_tvm.d_pooled_ready"


# The MLP parameter layout has one name, ``ModelConfig.mlp_param_specs``; this alias is kept
# for the modules that import it from here (runtime/params.py, runtime/trainer.py,
# tests/test_interop.py).
mlp_param_specs = ModelConfig.mlp_param_specs


def _t(shape, dtype=F32) -> relax.TensorType:
    return relax.TensorType(shape, dtype)


class _Kernels:
    """Adds each distinct kernel to the module once, under a name that says its shape (kernels
    are shared by name: two layers of one shape call one function)."""

    def __init__(self, bb: relax.BlockBuilder):
        self.bb = bb
        self.gvars: dict[str, relax.GlobalVar] = {}

    def get(self, name: str, make) -> relax.GlobalVar:
        if name not in self.gvars:
            self.gvars[name] = self.bb.add_func(make(), name)
        return self.gvars[name]


class DLRMGraph:
    """Builds the Relax IRModule of one DLRM for one (local) batch size."""

    def __init__(self, model: ModelConfig, batch_size: int, loss_scale: float | None = None,
                 precision: str = "fp32", optimizer: str = "sgd", hooks: bool = False,
                 layouts: str = "plain"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.optimizer = optimizer
        self.adagrad = optimizer != "sgd"  # rwsadagrad or adagrad: an optimizer state
        self.exact = optimizer == "adagrad"  # elementwise: the tables' state is [rows, D]
        self.hooks = hooks
        self.m = model
        self.B = batch_size
        self.loss_scale = loss_scale
        self.specs = model.mlp_param_specs()
        self.bf16 = precision == "bf16"
        self.act = "bfloat16" if self.bf16 else F32  # weights/activations in the GEMMs
        self.sfx = "_bf16" if self.bf16 else ""
        if layouts not in ("plain", "vnni"):
            raise ValueError(f"layouts must be plain or vnni, got {layouts!r}")
        # "vnni" (bf16 only): the GEMMs whose shapes allow it read operands packed once in the
        # microkernel's VNNI-2 layout (ops.pack_vnni / ops.gemm_vnni); the dense input is
        # padded to a multiple of 16 columns where it enters
        self.vnni = layouts == "vnni" and self.bf16
        n0 = model.bot_layers[0][1]
        self.pad_in = (-(-model.num_dense // 16) * 16
                       if self.vnni and n0 % 16 == 0 and batch_size % 2 == 0 else model.num_dense)

    def _cast(self, k, x, shape, src: str, dst: str):
        """``x`` converted between fp32 and bf16 (no-op in fp32 mode)."""
        if not self.bf16:
            return x
        name = f"cast_{src}_{dst}_{'x'.join(map(str, shape))}"
        return self._emit_tir(k, name, lambda: ops.cast(shape, src, dst), [x], _t(shape, dst))

    def _to_act(self, k, x, shape):
        return self._cast(k, x, shape, F32, self.act)

    def _to_f32(self, k, x, shape):
        return self._cast(k, x, shape, self.act, F32)

    # ------------------------------------------------------------ helpers
    def _emit_tir(self, k: _Kernels, name, make, args, out):
        gv = k.get(name, make)
        return k.bb.emit(relax.call_tir(gv, args, out))

    def _params(self, dtype: str | None = None, suffix: str = "") -> list[relax.Var]:
        return [relax.Var(n + suffix, _t(s, dtype or self.act)) for n, s in self.specs]

    def _layers(self, params):
        """[(Wt var, b var, (k, n))] for bottom and top."""
        by_name = dict(zip((n for n, _ in self.specs), params, strict=True))
        shapes = dict(self.specs)

        def part(p: str, count: int):
            return [(by_name[f"{p}{i}_w"], by_name[f"{p}{i}_b"], shapes[f"{p}{i}_w"])
                    for i in range(count)]

        return part("bot", len(self.m.bot_layers)), part("top", len(self.m.top_layers))

    def _cross(self, params):
        """[(u var, v var, b var)] of the DCN cross layers ([] unless "dcn")."""
        by_name = dict(zip((n for n, _ in self.specs), params, strict=True))
        return [(by_name[f"cross{i}_u"], by_name[f"cross{i}_v"], by_name[f"cross{i}_b"])
                for i in range(self.m.num_cross_layers)]

    def _forward(self, k: _Kernels, dense, pooled, params, wait: bool = False):
        m, B = self.m, self.B
        T, D = m.num_tables, m.embedding_dim
        W = m.interaction_width_padded
        bot, top = self._layers(params)
        act = self.act
        if self.pad_in != m.num_dense:  # once, where the batch enters: K even for every layer
            h = self._emit_tir(k, f"cast_pad_{B}x{m.num_dense}x{self.pad_in}",
                               lambda: ops.cast_pad(B, m.num_dense, self.pad_in),
                               [dense], _t((B, self.pad_in), act))
        else:
            h = self._to_act(k, dense, (B, m.num_dense))
        acts_bot = [h]
        for li_, (w, b, (ki, n)) in enumerate(bot):
            kin = self.pad_in if li_ == 0 else ki
            h = self._gemm_fwd(k, h, w, b, kin, ki, n, "bias_relu", act)
            acts_bot.append(h)
        h = self._to_f32(k, h, (B, D))
        if wait:  # the bottom MLP ran while the pooled rows were on their way
            pooled = k.bb.emit(relax.op.call_pure_packed(HOOK_WAIT_POOLED, pooled,
                                                         ty_args=_t((B, T, D))))
        tc = None
        if m.interaction == "dot":
            li, lj, _ = inter.pair_tables(m.num_features, m.interaction_itself)
            tc = self._emit_tir(k, "stack_features", lambda: inter.stack_features(B, T, D),
                                [h, pooled], _t((B, T + 1, D)))
            r = self._emit_tir(
                k, "interaction_dot_fwd",
                lambda: inter.interaction_dot_fwd(B, T + 1, D, m.interaction_itself, W),
                [tc, relax.const(np.array(li, np.int32), "int32"),
                 relax.const(np.array(lj, np.int32), "int32")], _t((B, W)))
        else:  # cat, and dcn's x0
            r = self._emit_tir(k, "interaction_cat_fwd",
                               lambda: inter.interaction_cat_fwd(B, T, D, W), [h, pooled],
                               _t((B, W)))
        if m.interaction == "dcn":
            h, tc = self._cross_forward(k, r, params)
        else:
            h = self._to_act(k, r, (B, W))
        acts_top = [h]
        for kk, (w, b, (ki, n)) in enumerate(top):
            last = kk == len(top) - 1
            epi = "bias" if last else "bias_relu"
            odt = F32 if last else act  # the logit stays fp32 for the loss
            h = self._gemm_fwd(k, h, w, b, ki, ki, n, epi, odt)
            acts_top.append(h)
        return acts_bot, acts_top, tc

    # ------------------------------------------------------------ DCN cross layers
    def _cross_forward(self, k, x0, params):
        """The L cross layers on x0 [B, Np] (fp32): (x_L in the GEMM dtype, for the top MLP;
        what the backward reads: {"x0", "layers": [(x_l in the GEMM dtype, u_l, z_l)]})."""
        m, B, act, sfx = self.m, self.B, self.act, self.sfx
        W, r = m.interaction_width_padded, m.dcn_low_rank_dim
        cross = self._cross(params)
        x, xa = x0, self._to_act(k, x0, (B, W))
        saved = []
        for li, (u, v, b) in enumerate(cross):
            ul = self._gemm_fwd(k, xa, u, None, W, W, r, "none", act)  # [B, r]
            z = self._gemm_fwd(k, ul, v, b, r, r, W, "bias", F32)  # [B, Np] fp32
            saved.append((xa, ul, z))
            keep = li < len(cross) - 1 or not self.bf16  # bf16's x_L: only its bf16 copy
            types = ([_t((B, W))] if keep else []) + ([_t((B, W), act)] if self.bf16 else [])
            res = self._emit_tir(k, f"cross_fwd_{B}x{W}{sfx}{'' if keep else '_last'}",
                                 lambda keep=keep: dcn.cross_fwd(B, W, act, keep),
                                 [x0, z, x], types if len(types) > 1 else types[0])
            if len(types) == 1:
                x = xa = res
            else:
                x = k.bb.emit(relax.TupleGetItem(res, 0))
                xa = k.bb.emit(relax.TupleGetItem(res, 1))
        return xa, {"x0": x0, "layers": saved}

    def _cross_backward(self, k, dx_last, saved, params, done):
        """The cross layers' backward from dx_L [B, Np] (fp32): the tuple (dx [B, D] of the
        bottom output, d_pooled [B, T, D]), as the dot and cat backward kernels return;
        ``done(l, du, dv, db)`` as cross layer l's gradients are final."""
        m, B, act, sfx = self.m, self.B, self.act, self.sfx
        T, D = m.num_tables, m.embedding_dim
        W, r = m.interaction_width_padded, m.dcn_low_rank_dim
        x0 = saved["x0"]
        cross = self._cross(params)
        # dx_{l+1} = a + g: a = dx_{l+2} (dx_L at the last layer), g = g_{l+1} = du_{l+1} u^T
        a, g, acc = dx_last, None, None
        for li in reversed(range(len(cross))):
            xa, ul, z = saved["layers"][li]
            u, v, _ = cross[li]
            has_g, has_acc = g is not None, acc is not None
            types = [_t((B, W))] * has_g + [_t((B, W), act), _t((B, W))]
            res = self._emit_tir(
                k, f"cross_bwd_{B}x{W}{sfx}{'_g' if has_g else ''}{'_acc' if has_acc else ''}",
                lambda has_g=has_g, has_acc=has_acc: dcn.cross_bwd(B, W, act, has_g, has_acc),
                [a, *([g] if has_g else []), x0, z, *([acc] if has_acc else [])], types)
            outs = [k.bb.emit(relax.TupleGetItem(res, j)) for j in range(len(types))]
            if has_g:
                a = outs.pop(0)  # dx_{l+1}
            dz, acc = outs
            dv, db, dul = self._layer_backward(k, ul, v, (r, W), dz, False)
            du, _, g = self._layer_backward(k, xa, u, (W, r), dul, False, dx_dtype=F32,
                                            bias=False)
            done(li, du, dv, db)
        res = self._emit_tir(k, "cross_input_bwd", lambda: dcn.cross_input_bwd(B, T, D, W),
                             [acc, a, g], [_t((B, D)), _t((B, T, D))])
        return res

    def _use_vnni(self, k_red: int, n: int) -> bool:
        """A GEMM with reduction length k_red and N columns runs on packed operands."""
        return self.vnni and n % 16 == 0 and k_red % 2 == 0

    def _pack(self, k, x, rows, cols, transpose=False, k_pad=None):
        kk, n = (cols, rows) if transpose else (rows, cols)
        kp = k_pad or kk + kk % 2
        name = f"pack_vnni_{rows}x{cols}{'_t' if transpose else ''}{f'_k{kp}' if kp != kk else ''}"
        return self._emit_tir(k, name, lambda: ops.pack_vnni(rows, cols, transpose, kp),
                              [x], _t(ops.vnni_shape(kp, n), "bfloat16"))

    def _gemm_fwd(self, k, h, w, b, kin, ki, n, epi, odt):
        """One layer's forward: h [B, kin] (kin >= ki: padded input columns are zero) times
        Wt [ki, n] plus the bias (``b`` None: no bias, epilogue "none"), then ``epi``."""
        B, act, sfx = self.B, self.act, self.sfx
        bias = [] if b is None else [b]
        if self._use_vnni(kin, n):
            wp = self._pack(k, w, ki, n, k_pad=kin)
            return self._emit_tir(
                k, f"gemm_vnni_fwd_{B}x{kin}x{n}_{epi}{'_f32' if odt == F32 else ''}",
                lambda: ops.gemm_vnni(B, kin, n, "mk", epi, out_dtype=odt),
                [h, wp, *bias], _t((B, n), odt))
        return self._emit_tir(
            k, f"gemm_fwd_{B}x{ki}x{n}_{epi}{sfx}",
            lambda: ops.gemm(B, ki, n, "mk", epi, in_dtype=act, out_dtype=odt),
            [h, w, *bias], _t((B, n), odt))

    def _layer_backward(self, k, x, w, shape, dz, mask_input, dx_dtype=None, x_cols=None,
                        bias: bool = True):
        """Gradients of one Linear: (dWt, db, dX or None), dWt and db in fp32.

        ``dz`` is in the GEMM dtype; ``mask_input``: the layer's input came out of a ReLU, so
        dX is masked by it; False: dX unmasked; None: no dX needed. dX comes out in
        ``dx_dtype`` (default: the GEMM dtype). ``bias`` False: a layer without a bias (db
        None)."""
        B, act, sfx = self.B, self.act, self.sfx
        ki, n = shape
        xc = x_cols or ki  # the input's stored width (the padded dense input: 16 for 13)
        if self._use_vnni(B, n):  # dW = X^T dZ, both packed over the batch pairs
            xp = self._pack(k, x, B, xc)
            dzp = self._pack(k, dz, B, n)
            dw = self._emit_tir(k, f"gemm_vnni_dw_{ki}x{B}x{n}",
                                lambda: ops.gemm_vnni(ki, B, n, "vnni", "none"),
                                [xp, dzp], _t((ki, n)))
        else:
            if xc != ki:
                raise ValueError("a padded input needs the packed weight gradient")
            dw = self._emit_tir(k, f"gemm_dw_{ki}x{B}x{n}{sfx}",
                                lambda: ops.gemm(ki, B, n, "km", "none", in_dtype=act),
                                [x, dz], _t((ki, n)))
        db = self._emit_tir(k, f"colsum_{B}x{n}{sfx}", lambda: ops.colsum(B, n, act), [dz],
                            _t((n,))) if bias else None
        if mask_input is None:
            return dw, db, None
        masked = mask_input is not False
        epi = "relu_mask" if masked else "none"
        odt = dx_dtype or act
        mask = [mask_input] if masked else []
        tag = f"{epi}{'_f32' if odt != act else ''}"
        if self._use_vnni(n, ki):  # dX = dZ @ Wt^T: Wt packed transposed once per step
            wtp = self._pack(k, w, ki, n, transpose=True)
            dx = self._emit_tir(k, f"gemm_vnni_dx_{B}x{n}x{ki}_{tag}",
                                lambda: ops.gemm_vnni(B, n, ki, "mk", epi, out_dtype=odt),
                                [dz, wtp, *mask], _t((B, ki), odt))
            return dw, db, dx
        # dX = dZ @ Wt^T: Wt read as B in [N, K] layout (the GEMM rule's packing transposes it)
        dx = self._emit_tir(k, f"gemm_dx_{B}x{n}x{ki}_{epi}{sfx}{'_f32' if odt != act else ''}",
                            lambda: ops.gemm(B, n, ki, "mk", epi, b_layout="nk", in_dtype=act,
                                             out_dtype=odt), [dz, w, *mask],
                            _t((B, ki), odt))
        return dw, db, dx

    # ------------------------------------------------------------ module
    def build(self, parts: tuple[str, ...] = ("sparse", "dense")) -> tvm.IRModule:
        """The module's functions: "sparse" (embedding_forward, embedding_update) and/or
        "dense" (dense_forward_backward, predict, dense_update). A rank of a distributed run
        builds the sparse part for its table shards at the global batch and the dense part at
        its local batch."""
        bad = set(parts) - {"sparse", "dense"}
        if bad or not parts:
            raise ValueError(f"parts must be sparse and/or dense, got {parts}")
        m, B = self.m, self.B
        T, D = m.num_tables, m.embedding_dim
        W = m.interaction_width_padded
        bb = relax.BlockBuilder()
        k = _Kernels(bb)
        row_off = relax.const(np.array(m.table_offsets, np.int64), "int64")

        def sparse_inputs():
            nnz = tirx.Var("nnz", "int64")
            # bf16: Split-SGD rows, hi (the bf16 weight) then lo, one row of 2D halves
            return (relax.Var("tables", _t((m.total_rows, D * (2 if self.bf16 else 1)),
                                           self.act)),
                    relax.Var("indices", _t((nnz,), "int64")),
                    relax.Var("offsets", _t((T * B + 1,), "int64")))

        if "sparse" in parts:
            # embedding_forward ------------------------------------------------
            tables, indices, offsets = sparse_inputs()
            with bb.function("embedding_forward", [tables, indices, offsets]):
                with bb.dataflow():
                    out = self._emit_tir(
                        k, f"embedding_bag_fwd{self.sfx}",
                        lambda: ops.embedding_bag_fwd(B, m.table_offsets, D, self.act,
                                                      2 * D if self.bf16 else None),
                        [tables, indices, offsets, row_off], _t((B, T, D)))
                    out = bb.emit_output(out)
                bb.emit_func_output(out)

        if "dense" in parts:
            # dense_forward_backward -------------------------------------------
            dense = relax.Var("dense", _t((B, m.num_dense)))
            pooled = relax.Var("pooled", _t((B, T, D)))
            labels = relax.Var("labels", _t((B,)))
            params = self._params()
            with bb.function("dense_forward_backward", [dense, pooled, labels, *params]):
                with bb.dataflow():
                    acts_bot, acts_top, tc = self._forward(k, dense, pooled, params,
                                                           wait=self.hooks)
                    res = self._emit_tir(k, "bce_loss", lambda: ops.bce_loss(B, self.loss_scale),
                                         [acts_top[-1], labels], [_t((B,)), _t((1,)), _t((B, 1))])
                    p = bb.emit(relax.TupleGetItem(res, 0))
                    loss = bb.emit(relax.TupleGetItem(res, 1))
                    dz = bb.emit(relax.TupleGetItem(res, 2))
                    dz = self._to_act(k, dz, (B, 1))
                    bot, top = self._layers(params)
                    # layer numbers (HOOK_GRAD_READY, the gradients' order): bottom, the DCN
                    # cross layers, top
                    nbc = len(bot) + m.num_cross_layers
                    grads: dict[int, tuple] = {}
                    tokens = []

                    def ready(i, *gs):  # layer i's gradients are final: start reducing
                        if self.hooks:
                            tokens.append(bb.emit(relax.op.call_pure_packed(
                                HOOK_GRAD_READY, relax.prim_value(tirx.IntImm("int64", i)),
                                *gs, ty_args=_t((1,)))))
                    for i in reversed(range(len(top))):
                        w, _, shape = top[i]
                        mask = acts_top[i] if i > 0 else False
                        # the interaction's gradient (top layer 0's dX) stays fp32
                        dw, db, dz = self._layer_backward(k, acts_top[i], w, shape, dz, mask,
                                                          dx_dtype=F32 if i == 0 else None)
                        grads[nbc + i] = (dw, db)
                        ready(nbc + i, dw, db)

                    def cross_done(li, *gs):
                        grads[len(bot) + li] = gs
                        ready(len(bot) + li, *gs)
                    if m.interaction == "dcn":
                        res = self._cross_backward(k, dz, tc, params, cross_done)
                    elif m.interaction == "dot":
                        _, _, pidx = inter.pair_tables(m.num_features, m.interaction_itself)
                        res = self._emit_tir(
                            k, "interaction_dot_bwd",
                            lambda: inter.interaction_dot_bwd(B, T + 1, D,
                                                              m.interaction_itself, W),
                            [dz, tc, relax.const(np.array(pidx, np.int32), "int32")],
                            [_t((B, D)), _t((B, T, D))])
                    else:
                        res = self._emit_tir(k, "interaction_cat_bwd",
                                             lambda: inter.interaction_cat_bwd(B, T, D, W), [dz],
                                             [_t((B, D)), _t((B, T, D))])
                    dx = bb.emit(relax.TupleGetItem(res, 0))
                    d_pooled = bb.emit(relax.TupleGetItem(res, 1))
                    if self.hooks:  # send d_pooled on its way during the bottom backward
                        tokens.append(bb.emit(relax.op.call_pure_packed(
                            HOOK_DPOOLED_READY, d_pooled, ty_args=_t((1,)))))
                    # the bottom MLP's output went through a ReLU: mask its gradient
                    dz = self._emit_tir(k, f"relu_bwd_{B}x{D}{self.sfx}",
                                        lambda: ops.relu_bwd(B, D, self.act, self.act),
                                        [dx, acts_bot[-1]], _t((B, D), self.act))
                    for i in reversed(range(len(bot))):
                        w, _, shape = bot[i]
                        mask = acts_bot[i] if i > 0 else None
                        dw, db, dz = self._layer_backward(
                            k, acts_bot[i], w, shape, dz, mask,
                            x_cols=self.pad_in if i == 0 else None)
                        grads[i] = (dw, db)
                        ready(i, dw, db)
                    flat = [g for i in range(nbc + len(top)) for g in grads[i]]
                    out = bb.emit_output(relax.Tuple([loss, p, *flat, d_pooled, *tokens]))
                bb.emit_func_output(out)

            # predict ----------------------------------------------------------
            dense = relax.Var("dense", _t((B, m.num_dense)))
            pooled = relax.Var("pooled", _t((B, T, D)))
            params = self._params()
            with bb.function("predict", [dense, pooled, *params]):
                with bb.dataflow():
                    _, acts_top, _ = self._forward(k, dense, pooled, params)
                    p = self._emit_tir(k, f"sigmoid_{B}", lambda: ops.sigmoid(B), [acts_top[-1]],
                                       _t((B,)))
                    out = bb.emit_output(p)
                bb.emit_func_output(out)

            # dense_update -----------------------------------------------------
            params = self._params()
            lows = self._params("uint16", "_lo") if self.bf16 else []
            accs = self._params(F32, "_acc") if self.adagrad else []
            grads_v = [relax.Var(f"d_{n}", _t(s)) for n, s in self.specs]
            lr = relax.Var("lr", _t((1,)))
            with bb.function("dense_update", [*params, *lows, *accs, *grads_v, lr]):
                with bb.dataflow():
                    outs = []
                    for i, ((_, shape), pv, gv) in enumerate(zip(self.specs, params, grads_v,
                                                                 strict=True)):
                        sh = "x".join(map(str, shape))
                        state = [lows[i]] if self.bf16 else []
                        state += [accs[i]] if self.adagrad else []
                        if self.exact:
                            fn = k.get(f"adagrad_exact_update_{sh}{self.sfx}",
                                       lambda shape=shape: optim.adagrad_update(
                                           shape, self.bf16, EXACT_ADAGRAD_EPS))
                        elif self.adagrad:
                            fn = k.get(f"adagrad_update_{sh}{self.sfx}",
                                       lambda shape=shape: optim.adagrad_update(shape, self.bf16))
                        elif self.bf16:
                            fn = k.get(f"split_sgd_update_{sh}",
                                       lambda shape=shape: optim.split_sgd_update(shape))
                        else:
                            fn = k.get(f"sgd_update_{sh}",
                                       lambda shape=shape: optim.sgd_update(shape))
                        types = [_t(shape, self.act)] + [_t(shape, "uint16")] * self.bf16 + \
                            [_t(shape)] * self.adagrad
                        res = bb.emit(relax.call_tir_inplace(
                            fn, [pv, *state, gv, lr], list(range(len(types))),
                            types if len(types) > 1 else types[0]))
                        if len(types) == 1:
                            outs.append(res)
                        else:
                            outs += [bb.emit(relax.TupleGetItem(res, j)) for j in range(len(types))]
                    out = bb.emit_output(relax.Tuple(outs))
                bb.emit_func_output(out)

        if "sparse" in parts:
            # embedding_update -------------------------------------------------
            tables, indices, offsets = sparse_inputs()
            d_pooled = relax.Var("d_pooled", _t((B, T, D)))
            lr = relax.Var("lr", _t((1,)))
            shape = (m.total_rows, D * (2 if self.bf16 else 1))
            acc = (m.total_rows, D) if self.exact else (m.total_rows,)
            state = [relax.Var("row_acc", _t(acc))] if self.adagrad else []
            types = [_t(shape, self.act)] + [_t(acc)] * self.adagrad
            opt = self.optimizer
            storage = "rows" if self.bf16 else "fp32"
            with bb.function("embedding_update", [tables, *state, indices, offsets, d_pooled, lr]):
                with bb.dataflow():
                    fn = k.get(f"embedding_bag_update_{opt}_{storage}",
                               lambda: embedding_bag_update(B, T, D, opt, storage))
                    out = bb.emit(relax.call_tir_inplace(
                        fn, [tables, *state, indices, offsets, row_off, d_pooled, lr],
                        list(range(len(types))), types if len(types) > 1 else types[0]))
                    out = bb.emit_output(out)
                bb.emit_func_output(out)


        return bb.get()
