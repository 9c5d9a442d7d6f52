"""A PyTorch DLRM with the reference's structure, loadable with our weights.

Used only as the oracle in tests and the baseline in benchmarks; the training path never
imports it (or torch). Mirrors facebookresearch/dlrm: EmbeddingBag(mode="sum", sparse=True),
ReLU after every bottom layer, dot interaction with the strict lower triangle (or with the
diagonal) concatenated after the bottom output, or cat; top MLP with ReLU and a final sigmoid;
BCELoss(mean); plain SGD with the sparse embedding gradients.

Interaction "dcn" (DLRM-DCNv2) follows torchrec's DLRM_DCN: the concatenation [bottom output,
pooled rows] through ``LowRankCrossNet`` (below: torchrec's parameter names and layouts,
W_kernels[l] [N, r], V_kernels[l] [r, N], bias[l] [N]; x_{l+1} = x0 * (W (V x_l) + b) + x_l),
then the top MLP. Our state stores the cross layer as u = V_kernels^T, v = W_kernels^T
(ModelConfig.mlp_param_specs, padded to interaction_width_padded).
"""

from __future__ import annotations

import numpy as np

from dlrm_tvm.config import Config
from dlrm_tvm.data import Batch


def low_rank_cross_net(in_features: int, num_layers: int, low_rank: int):
    """torchrec's LowRankCrossNet, written out (same parameter names, shapes, init and
    arithmetic order): W_kernels[l] [N, r] and V_kernels[l] [r, N] xavier-normal, bias[l] [N]
    zero; forward x_{l+1} = x0 * (W_kernels[l] (V_kernels[l] x_l) + bias[l]) + x_l."""
    import torch
    from torch import nn

    class LowRankCrossNet(nn.Module):
        def __init__(self):
            super().__init__()
            self._num_layers = num_layers
            self.W_kernels = nn.ParameterList(
                nn.Parameter(nn.init.xavier_normal_(torch.empty(in_features, low_rank)))
                for _ in range(num_layers))
            self.V_kernels = nn.ParameterList(
                nn.Parameter(nn.init.xavier_normal_(torch.empty(low_rank, in_features)))
                for _ in range(num_layers))
            self.bias = nn.ParameterList(
                nn.Parameter(torch.zeros(in_features)) for _ in range(num_layers))

        def forward(self, x0):  # [B, N]: torchrec's (N, r) @ (r, N) @ (B, N, 1), batched
            xl = x0
            for li in range(self._num_layers):
                xl_w = (xl @ self.V_kernels[li].t()) @ self.W_kernels[li].t()
                xl = x0 * (xl_w + self.bias[li]) + xl
            return xl

    return LowRankCrossNet()


def build(cfg: Config, state: dict[str, np.ndarray]):
    import torch
    from torch import nn

    m = cfg.model

    class DLRM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb_l = nn.ModuleList()
            for rows, off in zip(m.table_rows, m.table_offsets, strict=True):
                e = nn.EmbeddingBag(rows, m.embedding_dim, mode="sum", sparse=True)
                e.weight.data = torch.from_numpy(state["tables"][off : off + rows].copy())
                self.emb_l.append(e)
            self.bot_l = self._mlp("bot", m.bot_layers, sigmoid_last=False)
            self.top_l = self._mlp("top", m.top_layers, sigmoid_last=True)
            ni = m.num_features
            off = 1 if m.interaction_itself else 0
            self.li = torch.tensor([i for i in range(ni) for j in range(i + off)])
            self.lj = torch.tensor([j for i in range(ni) for j in range(i + off)])
            if m.interaction == "dcn":
                n = m.interaction_width
                self.crossnet = low_rank_cross_net(n, m.dcn_num_layers, m.dcn_low_rank_dim)
                for li in range(m.dcn_num_layers):  # our u = V_kernels^T, v = W_kernels^T
                    self.crossnet.V_kernels[li].data = torch.from_numpy(
                        state[f"cross{li}_u"][:n].T.copy())
                    self.crossnet.W_kernels[li].data = torch.from_numpy(
                        state[f"cross{li}_v"][:, :n].T.copy())
                    self.crossnet.bias[li].data = torch.from_numpy(
                        state[f"cross{li}_b"][:n].copy())

        def _mlp(self, part, layers, sigmoid_last):
            mods = []
            for i, (k, n) in enumerate(layers):
                lin = nn.Linear(k, n)
                lin.weight.data = torch.from_numpy(state[f"{part}{i}_w"][:k].T.copy())
                lin.bias.data = torch.from_numpy(state[f"{part}{i}_b"].copy())
                mods.append(lin)
                last = i == len(layers) - 1
                mods.append(nn.Sigmoid() if (last and sigmoid_last) else nn.ReLU())
            return nn.Sequential(*mods)

        def forward(self, dense, idx_l, off_l):
            x = self.bot_l(dense)
            ly = [e(i, o) for e, i, o in zip(self.emb_l, idx_l, off_l, strict=True)]
            if m.interaction == "dot":
                b, d = x.shape
                t = torch.cat([x] + ly, dim=1).view((b, -1, d))
                z = torch.bmm(t, torch.transpose(t, 1, 2))
                r = torch.cat([x, z[:, self.li, self.lj]], dim=1)
            else:
                r = torch.cat([x] + ly, dim=1)
                if m.interaction == "dcn":
                    r = self.crossnet(r)
            return self.top_l(r)

    return DLRM()


def torch_inputs(batch: Batch, num_tables: int):
    import torch

    B = batch.size
    idx_l, off_l = [], []
    for t in range(num_tables):
        lo, hi = batch.offsets[t * B], batch.offsets[(t + 1) * B]
        idx_l.append(torch.from_numpy(batch.indices[lo:hi].copy()))
        off_l.append(torch.from_numpy(batch.offsets[t * B : (t + 1) * B] - lo))
    return (torch.from_numpy(batch.dense), idx_l, off_l, torch.from_numpy(batch.labels))


def _rwsadagrad_step(params, state: dict, lr: float, eps: float = 1e-10) -> None:
    """The reference's --optimizer rwsadagrad, written out: sparse (embedding) gradients are
    coalesced, momentum[row] += mean(g^2) over the row, w -= lr * g / (sqrt(momentum) + eps);
    dense gradients: sum += g^2, w -= lr * g / (sqrt(sum) + eps)."""
    import torch

    with torch.no_grad():
        for p in params:
            if p.grad is None:
                continue
            g = p.grad
            if g.is_sparse:
                g = g.coalesce()
                rows, vals = g.indices()[0], g.values()
                mom = state.setdefault(p, torch.zeros(p.shape[0], dtype=torch.float32))
                mom.index_add_(0, rows, vals.pow(2).mean(dim=1))
                std = mom[rows].sqrt().add_(eps)
                p.index_add_(0, rows, -lr * (vals / std[:, None]))
            else:
                acc = state.setdefault(p, torch.zeros_like(p))
                acc.addcmul_(g, g, value=1.0)
                p.addcdiv_(g, acc.sqrt().add_(eps), value=-lr)


class TorchTrainer:
    """SGD (or the reference's rwsadagrad, or torch.optim.Adagrad for adagrad: its sparse
    path on the tables' gradients, eps 1e-8; per the config) on the torch DLRM, with our LR
    schedule; ``autocast_bf16`` for the bf16 baseline, ``compiled`` for torch.compile."""

    def __init__(self, cfg: Config, state: dict[str, np.ndarray], autocast_bf16: bool = False,
                 compiled: bool = False):
        import torch

        self.cfg = cfg
        self.model = build(cfg, state)
        # torch.compile (inductor) of the forward; the backward is compiled with it (AOT
        # autograd). The first steps pay the compile: a benchmark times it separately.
        self.forward = torch.compile(self.model) if compiled else self.model
        self.adagrad = cfg.train.optimizer == "rwsadagrad"
        if cfg.train.optimizer == "adagrad":
            from dlrm_tvm.config import OPTIMIZER_EPS

            self.opt = torch.optim.Adagrad(self.model.parameters(), lr=cfg.train.learning_rate,
                                           eps=OPTIMIZER_EPS["adagrad"])
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.train.learning_rate)
        self.adagrad_state: dict = {}
        self.loss_fn = torch.nn.BCELoss(reduction="mean")
        self.autocast = autocast_bf16
        self.step_count = 0

    def step(self, batch: Batch, inputs=None) -> float:
        import torch

        dense, idx_l, off_l, labels = inputs or torch_inputs(batch, self.cfg.model.num_tables)
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.train.lr_at(self.step_count)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            p = self.forward(dense, idx_l, off_l)
        loss = self.loss_fn(p.float()[:, 0], labels)
        loss.backward()
        if self.adagrad:
            _rwsadagrad_step(list(self.model.parameters()), self.adagrad_state,
                             self.cfg.train.lr_at(self.step_count))
        else:
            self.opt.step()
        self.step_count += 1
        return float(loss.detach())

    def state(self) -> dict[str, np.ndarray]:
        out = {"tables": np.concatenate([e.weight.detach().numpy() for e in self.model.emb_l])}
        for part, seq in (("bot", self.model.bot_l), ("top", self.model.top_l)):
            lins = [x for x in seq if hasattr(x, "weight")]
            for i, lin in enumerate(lins):
                out[f"{part}{i}_w"] = lin.weight.detach().numpy().T.copy()
                out[f"{part}{i}_b"] = lin.bias.detach().numpy().copy()
        m = self.cfg.model
        if m.interaction == "dcn":  # in our layout, padded to interaction_width_padded
            n, npad = m.interaction_width, m.interaction_width_padded
            net = self.model.crossnet
            for li in range(m.dcn_num_layers):
                u = np.zeros((npad, m.dcn_low_rank_dim), np.float32)
                v = np.zeros((m.dcn_low_rank_dim, npad), np.float32)
                b = np.zeros(npad, np.float32)
                u[:n] = net.V_kernels[li].detach().numpy().T
                v[:, :n] = net.W_kernels[li].detach().numpy().T
                b[:n] = net.bias[li].detach().numpy()
                out.update({f"cross{li}_u": u, f"cross{li}_v": v, f"cross{li}_b": b})
        return out
