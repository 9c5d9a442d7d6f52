"""The DLRM inference graph as ONNX, built directly with ``onnx.helper`` (no torch), and a plain
NumPy forward pass of the same model (the reference the tests compare against).

Graph inputs and output (B and nnz are dynamic):

  dense    float32 [B, num_dense]
  indices  int64   [nnz]        row within its table
  offsets  int64   [T*B + 1]    our table-major jagged layout: bag (t, b) is
                                indices[offsets[t*B + b] : offsets[t*B + b + 1]]
  p        float32 [B]          click probability

How it computes (ops: Shape, Mul, Add, Slice, ConstantOfShape, ScatterElements, CumSum, Div,
Gather, Unsqueeze, Concat, ScatterND, Reshape, Transpose, MatMul, Relu, Sigmoid; opset >= 16
for the ``reduction="add"`` of ScatterElements and ScatterND):

  embedding bags  hist = ScatterElements(zeros[nnz + 1], offsets[1:-1], ones, reduction=add);
                  bag = CumSum(hist[:nnz]) (the bag of each lookup: the number of bag starts
                  at or before it); table = bag / B; row = indices + table_offsets[table];
                  pooled = ScatterND(zeros[T*B, D], bag, Gather(tables, row), reduction=add)
                  -> [T, B, D] -> [B, T, D]. Empty bags stay 0.
  bottom MLP      MatMul with our Wt [in, out], Add bias, Relu after every layer.
  interaction     Tc = [bottom output, pooled tables] [B, F, D]; dot: Z = Tc @ Tc^T,
                  Gather of the flattened pairs (i, j) in the reference's order (for i in
                  range(F), for j in range(i + itself)) after the bottom output; cat: Tc
                  flattened to [B, F*D]; dcn: x0 = that cat output [B, N], N = F*D, then
                  per cross layer x = Add(Mul(x0, Add(MatMul(MatMul(x, u), v), b)), x)
                  with u [N, r], v [r, N], b [N] (ours without the padding past N:
                  ``reference.cross_layers``).
  top MLP         the first layer uses only the ``interaction_width`` true rows of top0_w;
                  Relu after every layer but the last, then Sigmoid, reshaped to [B].

The model's tables are one initializer; models over 1.8 GB of weights are saved with their
tensors in an external data file beside the model (``<name>.data``), as protobuf caps at 2 GB.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config, ModelConfig
from dlrm_tvm.data import Batch, validate_batch
from dlrm_tvm.interop.reference import check_state, cross_layers, model_of, top0_weight

MIN_OPSET = 16  # ScatterElements / ScatterND reduction="add"
_EXTERNAL_DATA_BYTES = 1_800_000_000


def pair_indices(num_features: int, itself: bool) -> tuple[list[int], list[int]]:
    """(li, lj): the reference's dot-interaction pairs, ``for i in range(F): for j in
    range(i + itself)`` (the order of ``graphs/ops.py`` ``pair_tables`` and ``torch_ref``)."""
    li, lj = [], []
    for i in range(num_features):
        for j in range(i + (1 if itself else 0)):
            li.append(i)
            lj.append(j)
    return li, lj


def predict_numpy(cfg: ModelConfig | Config, state: Mapping[str, np.ndarray],
                  batch: Batch) -> np.ndarray:
    """Click probabilities p [B] (float32) of the model ``state`` on ``batch``, in NumPy:
    the sigmoid of ``logits_numpy``."""
    return (1.0 / (1.0 + np.exp(-logits_numpy(cfg, state, batch)))).astype(np.float32)


def logits_numpy(cfg: ModelConfig | Config, state: Mapping[str, np.ndarray],
                 batch: Batch) -> np.ndarray:
    """The logits [B] (float64, before the sigmoid) of the model ``state`` on ``batch``.

    The reference forward pass written out (sum-pooled bags, ReLU bottom MLP, dot or cat
    interaction or the cat through the DCN cross layers, ReLU top MLP without its last ReLU),
    in float64. The batch is checked with ``data.validate_batch`` (its labels are not
    used)."""
    m = model_of(cfg)
    check_state(m, state)
    B, T, D = batch.size, m.num_tables, m.embedding_dim
    validate_batch(dataclasses.replace(batch, labels=np.zeros(B, np.float32)), m, B)
    off = batch.offsets
    sizes = np.diff(off)
    bag = np.repeat(np.arange(T * B), sizes)
    base = np.asarray(m.table_offsets, np.int64)[bag // B]
    rows = np.asarray(state["tables"])[batch.indices + base].astype(np.float64)
    pooled = np.zeros((T * B, D))
    full = sizes > 0
    if full.any():
        # each non-empty bag's rows run from its start to the next non-empty bag's start
        pooled[full] = np.add.reduceat(rows, off[:-1][full], axis=0)
    pooled = pooled.reshape(T, B, D).transpose(1, 0, 2)

    h = batch.dense.astype(np.float64)
    for i in range(len(m.bot_layers)):
        h = np.maximum(h @ state[f"bot{i}_w"].astype(np.float64) + state[f"bot{i}_b"], 0.0)
    tc = np.concatenate([h[:, None, :], pooled], axis=1)  # [B, F, D]
    if m.interaction == "dot":
        z = tc @ tc.transpose(0, 2, 1)
        li, lj = pair_indices(m.num_features, m.interaction_itself)
        r = np.concatenate([h, z[:, li, lj]], axis=1)
    else:
        r = tc.reshape(B, -1)
        x0 = r
        for u, v, bias in cross_layers(m, state):  # dcn: x_{l+1} = x0 * (x_l u v + b) + x_l
            r = x0 * (r @ u.astype(np.float64) @ v.astype(np.float64) + bias) + r
    n_top = len(m.top_layers)
    for i in range(n_top):
        w = top0_weight(m, state) if i == 0 else state[f"top{i}_w"]
        r = r @ w.astype(np.float64) + state[f"top{i}_b"]
        if i < n_top - 1:
            r = np.maximum(r, 0.0)
    return r[:, 0]


class _Graph:
    """Nodes and initializers with unique names."""

    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        from onnx import helper

        self._n += 1
        out = name or f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self._n}_{op_type}",
                                           **attrs))
        return out


def build_onnx_model(cfg: ModelConfig | Config, state: Mapping[str, np.ndarray],
                     opset: int = 17):
    """The inference graph of ``state`` as an ``onnx.ModelProto`` (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the embedding bags need ScatterElements and "
                         f"ScatterND with reduction='add' (opset >= {MIN_OPSET})")
    m = model_of(cfg)
    check_state(m, state)
    T, D, F = m.num_tables, m.embedding_dim, m.num_features
    g = _Graph()
    i64 = np.int64

    # constants
    c_t = g.const("T", np.array([T], i64))
    c_d = g.const("D", np.array([D], i64))
    c_one = g.const("one", np.array([1], i64))
    c_zero = g.const("zero", np.array([0], i64))
    c_mone = g.const("minus_one", np.array([-1], i64))
    c_axis0 = g.const("axis0", np.array(0, i64))
    c_ax1 = g.const("axes_1", np.array([1], i64))
    tables = g.const("tables", np.asarray(state["tables"], np.float32))
    base = g.const("table_offsets", np.asarray(m.table_offsets, i64))

    # embedding bags: the bag of every lookup from the offsets
    b = g.op("Shape", ["dense"], "batch_size", start=0, end=1)  # [1]
    tb = g.op("Mul", [b, c_t], "num_bags")
    nnz = g.op("Shape", ["indices"], "nnz")
    hist0 = g.op("ConstantOfShape", [g.op("Add", [nnz, c_one])],
                 value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))
    starts = g.op("Slice", ["offsets", c_one, c_mone, c_zero], "bag_starts")  # offsets[1:-1]
    ones = g.op("ConstantOfShape", [g.op("Shape", [starts])],
                value=helper.make_tensor("v", TensorProto.INT64, [1], [1]))
    hist = g.op("ScatterElements", [hist0, starts, ones], axis=0, reduction="add")
    hist = g.op("Slice", [hist, c_zero, nnz, c_zero])
    bag = g.op("CumSum", [hist, c_axis0], "bag_of_lookup")
    table = g.op("Div", [bag, b], "table_of_lookup")
    row = g.op("Add", ["indices", g.op("Gather", [base, table], axis=0)], "global_row")
    vecs = g.op("Gather", [tables, row], "looked_up", axis=0)  # [nnz, D]
    zeros = g.op("ConstantOfShape", [g.op("Concat", [tb, c_d], axis=0)],
                 value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))
    pooled = g.op("ScatterND", [zeros, g.op("Unsqueeze", [bag, c_ax1]), vecs],
                  "pooled_flat", reduction="add")  # [T*B, D]
    tbd = g.const("shape_t_b_d", np.array([T, -1, D], i64))
    pooled = g.op("Transpose", [g.op("Reshape", [pooled, tbd])], "pooled", perm=[1, 0, 2])

    # bottom MLP
    h = "dense"
    for i in range(len(m.bot_layers)):
        w = g.const(f"bot{i}_w", np.asarray(state[f"bot{i}_w"], np.float32))
        bias = g.const(f"bot{i}_b", np.asarray(state[f"bot{i}_b"], np.float32))
        h = g.op("Relu", [g.op("Add", [g.op("MatMul", [h, w]), bias])], f"bot{i}_out")

    # interaction
    tc = g.op("Concat", [g.op("Unsqueeze", [h, c_ax1]), pooled], "features", axis=1)  # [B, F, D]
    if m.interaction == "dot":
        z = g.op("MatMul", [tc, g.op("Transpose", [tc], perm=[0, 2, 1])], "dots")  # [B, F, F]
        z = g.op("Reshape", [z, g.const("shape_b_ff", np.array([0, F * F], i64))])
        li, lj = pair_indices(F, m.interaction_itself)
        pairs = g.const("pairs", np.array([i * F + j for i, j in zip(li, lj, strict=True)], i64))
        r = g.op("Concat", [h, g.op("Gather", [z, pairs], axis=1)], "interaction", axis=1)
    else:
        r = g.op("Reshape", [tc, g.const("shape_b_fd", np.array([0, F * D], i64))],
                 "interaction")
        # dcn: the low-rank cross layers on x0 = the concatenation, at the true width N
        x0 = r
        for li, (u, v, bias) in enumerate(cross_layers(m, state)):
            ul = g.op("MatMul", [r, g.const(f"cross{li}_u", u)], f"cross{li}_xu")
            z = g.op("Add", [g.op("MatMul", [ul, g.const(f"cross{li}_v", v)]),
                             g.const(f"cross{li}_b", bias)], f"cross{li}_z")
            r = g.op("Add", [g.op("Mul", [x0, z]), r], f"cross{li}_out")

    # top MLP
    n_top = len(m.top_layers)
    for i in range(n_top):
        wv = top0_weight(m, state) if i == 0 else np.asarray(state[f"top{i}_w"], np.float32)
        w = g.const(f"top{i}_w", wv)
        bias = g.const(f"top{i}_b", np.asarray(state[f"top{i}_b"], np.float32))
        r = g.op("Add", [g.op("MatMul", [r, w]), bias], f"top{i}_out")
        if i < n_top - 1:
            r = g.op("Relu", [r])
    g.op("Reshape", [g.op("Sigmoid", [r]), c_mone], "p")

    graph = helper.make_graph(
        g.nodes,
        "dlrm",
        inputs=[
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", m.num_dense]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["nnz"]),
            helper.make_tensor_value_info("offsets", TensorProto.INT64, ["num_bags_plus_1"]),
        ],
        outputs=[helper.make_tensor_value_info("p", TensorProto.FLOAT, ["B"])],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="dlrm-tvm",
        doc_string=(f"DLRM inference: {T} tables, D={D}, bottom {m.mlp_bot}, top {m.mlp_top}, "
                    f"interaction {m.interaction}"
                    + (" with the diagonal" if m.interaction_itself and m.interaction == "dot"
                       else "")
                    + (f" ({m.dcn_num_layers} cross layers of rank {m.dcn_low_rank_dim})"
                       if m.interaction == "dcn" else "")),
    )
    props = {"interaction": m.interaction, "interaction_itself": str(m.interaction_itself),
             "table_rows": ",".join(map(str, m.table_rows))}
    if m.interaction == "dcn":
        props.update(dcn_num_layers=str(m.dcn_num_layers),
                     dcn_low_rank_dim=str(m.dcn_low_rank_dim))
    onnx.helper.set_model_props(model, props)
    return model


def export_onnx(cfg: ModelConfig | Config, state: Mapping[str, np.ndarray],
                path: str | os.PathLike, opset: int = 17) -> Path:
    """Write the inference graph of ``state`` to ``path`` and check it with
    ``onnx.checker.check_model`` (full check, with shape inference); returns the path.

    Over 1.8 GB of weights, the tensors go to ``<path name>.data`` beside the model."""
    import onnx

    model = build_onnx_model(cfg, state, opset)
    path = Path(path)
    big = sum(len(t.raw_data) for t in model.graph.initializer) > _EXTERNAL_DATA_BYTES
    if big:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"{path.name}.data",
                        size_threshold=1024)
        onnx.checker.check_model(str(path), full_check=True)
    else:
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, str(path))
    return path
