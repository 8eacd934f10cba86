"""Fast per-customer gradient clipping for :class:`~fedcrm.models.lstm.ChurnLSTM`.

The default DP engine (``privacy.engine=fast``). Opacus' ``DPLSTM`` builds
per-customer gradients step by step through hooks (20-30x a plain step); this
engine computes the per-customer gradient *norms* and the *clipped sum* from
quantities a single backward pass already has ("book-keeping"):

* the LSTM runs as a time loop whose input projection is one matrix product
  over the whole sequence, ``Z = X W_ih^T + b``; the recurrence is a custom
  autograd function with a hand-written backward, returning ``G = dL/dZ``, the
  gradient with respect to the gate pre-activations of every step;
* a weight used at every step has per-customer gradient
  ``sum_t G_t a_t^T``, whose squared norm is
  ``sum_{t,s} (G_t . G_s)(a_t . a_s)`` (two T x T Gram matrices per customer;
  the G Gram is shared by ``W_ih`` and ``W_hh``), or, when cheaper, the
  per-customer gradient is formed and squared directly; each bias gets
  ``||sum_t G_t||^2`` (``bias_ih`` and ``bias_hh`` both count, as in Opacus);
* embeddings: per-customer gradients are scattered into ``[B, V, E]`` (the
  padding row excluded: it receives no gradient), head layers: the rank-one
  ``||dU_b||^2 ||a_b||^2`` (+ ``||dU_b||^2`` for the bias);
* clip factors ``c_b = min(1, C / (||g_b|| + 1e-6))`` (Opacus' formula), and
  the clipped sum is one weighted matrix product per weight
  (``sum_{b,t} c_b G_{b,t} a_{b,t}^T``), with no second backward pass.

Padded steps contribute nothing: with right padding, the states after a
customer's last real event do not reach the loss, so their ``G`` is exactly 0.
The result equals Opacus' clipped sum (see ``tests/models/test_dp_fast.py``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from fedcrm.models.lstm import ChurnLSTM

logger = logging.getLogger(__name__)

CLIP_EPS = 1e-6
"""Added to the norm in the clip factor, as Opacus does."""


GATE_ORDER = (3, 0, 1, 2)
"""The recurrence's gate order, as indices into ``nn.LSTM``'s (i, f, g, o): o, i, f, g.

The three sigmoid gates come first and the three gates driven by the cell
gradient (i, f, g) last, so that each group is one contiguous slice.
"""


def gate_permutation(hidden_size: int) -> torch.Tensor:
    """Row index turning ``nn.LSTM``'s gate order into :data:`GATE_ORDER`."""
    base = torch.arange(hidden_size)
    return torch.cat([base + k * hidden_size for k in GATE_ORDER])


class LSTMRecurrence(torch.autograd.Function):
    """The LSTM recurrence given all input projections.

    ``forward(z, w_hh)`` with ``z = X W_ih^T + b_ih + b_hh`` of shape
    ``[B, T, 4H]`` and ``w_hh`` of shape ``[4H, H]``, both with the gates in
    :data:`GATE_ORDER` (o, i, f, g; rows permuted by :func:`gate_permutation`),
    returns the hidden states ``[B, T + 1, H]`` with a zero initial state first
    (``out[:, 1:]`` are the outputs, ``out[:, :-1]`` the states each step's
    recurrent projection reads). The backward returns ``dL/dz`` only
    (contiguous, batch-major); ``w_hh`` must not require a gradient (the caller
    forms weight gradients from ``dL/dz`` itself).

    The loops use only views made before them; the backward precomputes all
    activation derivatives in a few whole-sequence operations, so that a step
    is one matrix product and four element-wise operations.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, z: torch.Tensor, w_hh: torch.Tensor, active: list[int] | None = None
    ) -> torch.Tensor:
        bsz, steps, four_h = z.shape
        hid = four_h // 4
        n_t = [bsz] * steps if active is None else active
        z = z.detach()
        w_t = w_hh.detach().t().contiguous()
        acts = z.new_zeros(steps, bsz, four_h)  # sigmoid(o, i, f), tanh(g)
        cs = z.new_zeros(steps + 1, bsz, hid)  # cs[t + 1] = c_t, cs[0] = 0
        hs = z.new_zeros(bsz, steps + 1, hid)  # hs[:, t + 1] = h_t, hs[:, 0] = 0
        fc = z.new_empty(bsz, hid)
        a_t = acts.unbind(0)
        sig_t = acts[:, :, : 3 * hid].unbind(0)
        tanh_t = acts[:, :, 3 * hid :].unbind(0)
        o_t, i_t, f_t, g_t = (acts[:, :, k * hid : (k + 1) * hid].unbind(0) for k in range(4))
        z_t, h_t, c_t = z.unbind(1), hs.unbind(1), cs.unbind(0)
        for t in range(steps):
            n = n_t[t]
            torch.addmm(z_t[t][:n], h_t[t][:n], w_t, out=a_t[t][:n])
            sig_t[t][:n].sigmoid_()
            tanh_t[t][:n].tanh_()
            torch.mul(f_t[t][:n], c_t[t][:n], out=fc[:n])
            torch.addcmul(fc[:n], i_t[t][:n], g_t[t][:n], out=c_t[t + 1][:n])
            torch.mul(o_t[t][:n], torch.tanh(c_t[t + 1][:n]), out=h_t[t + 1][:n])
        ctx.save_for_backward(w_hh.detach(), acts, cs)
        ctx.n_t = n_t
        return hs

    @staticmethod
    def backward(ctx, d_hs: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        w_hh, acts, cs = ctx.saved_tensors
        n_t = ctx.n_t
        steps, bsz, four_h = acts.shape
        hid = four_h // 4
        a4 = acts.view(steps, bsz, 4, hid)
        o, i, f, g = a4.unbind(2)
        tc = torch.tanh(cs[1:])
        # Whole-sequence precomputation: with dc the gradient w.r.t. c_t and dh
        # the one w.r.t. h_t, the gate pre-activation gradients are
        #   o: dh * tanh(c_t) * o(1-o)     i: dc * g * i(1-i)
        #   f: dc * c_{t-1} * f(1-f)       g: dc * i * (1-g^2)
        # and dc gains dh * o * (1 - tanh(c_t)^2).
        coef = torch.empty_like(a4)
        torch.mul(tc, o - o * o, out=coef[:, :, 0])
        torch.mul(g, i - i * i, out=coef[:, :, 1])
        torch.mul(cs[:-1], f - f * f, out=coef[:, :, 2])
        torch.mul(i, 1 - g * g, out=coef[:, :, 3])
        dc_from_h = (o * (1 - tc * tc)).unbind(0)
        dz = (
            acts.new_zeros(bsz, steps, four_h)
            if n_t[-1] < bsz
            else acts.new_empty(bsz, steps, four_h)
        )
        dz4 = dz.view(bsz, steps, 4, hid)
        dz_t, dz_o_t, dz_c_t = dz.unbind(1), dz4[:, :, 0].unbind(1), dz4[:, :, 1:].unbind(1)
        coef_o_t, coef_c_t = coef[:, :, 0].unbind(0), coef[:, :, 1:].unbind(0)
        f_t, d_hs_t = f.unbind(0), d_hs.unbind(1)
        # Rows are sorted by length (descending): at step t only the first
        # n_t[t] are real events; the others stay exactly zero.
        dh = d_hs_t[steps].clone()
        dc = dh * dc_from_h[steps - 1]
        for t in range(steps - 1, -1, -1):
            n = n_t[t]
            torch.mul(dh[:n], coef_o_t[t][:n], out=dz_o_t[t][:n])
            torch.mul(dc[:n].unsqueeze(1), coef_c_t[t][:n], out=dz_c_t[t][:n])
            if t == 0:
                break
            m = n_t[t - 1]
            dc[:n] *= f_t[t][:n]
            dh = torch.addmm(d_hs_t[t][:m], dz_t[t][:m], w_hh)
            dc[:m].addcmul_(dh, dc_from_h[t - 1][:m])
        return dz, None, None


def _weight_grads(
    g: torch.Tensor, inputs: list[torch.Tensor], gram_g: torch.Tensor | None
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor | None]:
    """Per-customer squared norms of ``sum_t G_t a_t^T`` for each ``a`` in ``inputs``.

    Returns the norms, the per-customer gradients when they were formed (else
    None) and the Gram matrix of ``G`` when it was formed (for reuse).
    """
    _, steps, out_dim = g.shape
    norms: list[torch.Tensor] = []
    per_sample: list[torch.Tensor | None] = []
    for a in inputs:
        in_dim = a.shape[-1]
        gram_cost = steps * steps * (in_dim + (0 if gram_g is not None else out_dim))
        if gram_cost < steps * out_dim * in_dim:
            if gram_g is None:
                gram_g = torch.bmm(g, g.transpose(1, 2))
            gram_a = torch.bmm(a, a.transpose(1, 2))
            norms.append((gram_g * gram_a).sum(dim=(1, 2)))
            per_sample.append(None)
        else:
            ps = torch.bmm(g.transpose(1, 2), a)  # [B, out, in]
            norms.append(ps.pow(2).sum(dim=(1, 2)))
            per_sample.append(ps)
    return norms, per_sample, gram_g


def clipped_grad_sum(
    model: ChurnLSTM, batch: dict[str, torch.Tensor], max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
    """Sum over customers of per-customer gradients clipped to ``max_grad_norm``.

    Parameters
    ----------
    model : ChurnLSTM
        Any engine; only its parameters are used (no hooks, no ``.grad``).
    batch : dict of tensors
        ``seq_cat``, ``seq_num``, ``lengths``, ``tabular``, ``y`` of B >= 1
        customers (right-padded sequences).
    max_grad_norm : float

    Returns
    -------
    grads : dict
        Canonical parameter name -> clipped sum of per-customer gradients of
        the binary cross-entropy (per customer, not averaged).
    norms : Tensor ``[B]``
        Per-customer gradient norms before clipping.
    loss_sum : float
        Summed loss over the batch.
    """
    params = {k: v.detach() for k, v in model.named_tensors().items()}
    dtype = params["lstm.weight_ih_l0"].dtype
    # Longest sequences first: at step t the recurrence runs on a prefix of rows.
    order = torch.argsort(batch["lengths"].long().clamp(min=1), descending=True, stable=True)
    batch = {k: v[order] for k, v in batch.items()}
    lengths = batch["lengths"].long().clamp(min=1)
    t_max = min(int(lengths[0]), batch["seq_cat"].shape[1])
    lengths = lengths.clamp(max=t_max)
    active = (lengths[None, :] > torch.arange(t_max)[:, None]).sum(dim=1).tolist()
    seq_cat = batch["seq_cat"][:, :t_max]
    bsz = seq_cat.shape[0]
    with torch.no_grad():
        x0 = model.embed(seq_cat, batch["seq_num"][:, :t_max].to(dtype)).to(dtype)

    # ---- forward with the graph reaching only Z of each layer and the head
    perm = gate_permutation(model.hidden_size)  # gradients below are in GATE_ORDER
    unperm = torch.argsort(perm)
    layer_in, zs, hs = [x0], [], []
    x = x0
    for layer in range(model.num_layers):
        w_ih = params[f"lstm.weight_ih_l{layer}"][perm]
        bias = (params[f"lstm.bias_ih_l{layer}"] + params[f"lstm.bias_hh_l{layer}"])[perm]
        z = F.linear(x, w_ih, bias)
        if layer == 0:
            z.requires_grad_(True)
        h_all = LSTMRecurrence.apply(z, params[f"lstm.weight_hh_l{layer}"][perm], active)
        zs.append(z)
        hs.append(h_all)
        x = h_all[:, 1:]
        layer_in.append(x)
    h_last = x[torch.arange(bsz), lengths - 1]
    a = model.head_input(h_last, batch["tabular"])
    acts, pre = [], []
    for module in model.head:
        if isinstance(module, nn.Linear):
            acts.append(a)
            a = F.linear(a, module.weight.detach(), module.bias.detach())
            pre.append(a)
        else:
            a = module(a)
    logits = a.squeeze(-1)
    loss = F.binary_cross_entropy_with_logits(logits, batch["y"].to(dtype), reduction="sum")
    grads_z_pre = torch.autograd.grad(loss, zs + pre)
    dzs, dpre = grads_z_pre[: len(zs)], grads_z_pre[len(zs) :]

    with torch.no_grad():
        sq = torch.zeros(bsz, dtype=dtype)
        # ---- LSTM layers
        lstm_info = []
        for layer in range(model.num_layers):
            g = dzs[layer]
            inp = layer_in[layer].detach()
            h_prev = hs[layer].detach()[:, :-1]
            norms, per_sample, _ = _weight_grads(g, [inp, h_prev], None)
            g_sum = g.sum(dim=1)
            sq += norms[0] + norms[1] + 2 * g_sum.pow(2).sum(dim=1)
            lstm_info.append((g, inp, h_prev, per_sample, g_sum))
        # ---- embeddings (padding row excluded: it has no gradient)
        w_emb0 = params["lstm.weight_ih_l0"][perm]
        emb_dim = model.embedding_dim
        n_emb = emb_dim * len(model.embeddings)
        d_emb = dzs[0] @ w_emb0[:, :n_emb]  # [B, T, n_cat * E]
        emb_ps = []
        for k, emb in enumerate(model.embeddings):
            d_k = d_emb[..., k * emb_dim : (k + 1) * emb_dim].reshape(bsz, -1, emb_dim)
            idx = seq_cat[..., k].reshape(bsz, -1, 1).expand(-1, -1, emb_dim)
            ps = d_k.new_zeros(bsz, emb.num_embeddings, emb_dim)
            ps.scatter_add_(1, idx, d_k)
            if emb.padding_idx is not None:
                ps[:, emb.padding_idx].zero_()
            sq += ps.pow(2).sum(dim=(1, 2))
            emb_ps.append(ps)
        # ---- head
        for a_in, du in zip(acts, dpre, strict=True):
            du_sq = du.pow(2).sum(dim=1)
            sq += du_sq * (a_in.detach().pow(2).sum(dim=1) + 1.0)

        norms_all = sq.clamp(min=0).sqrt()
        clip = (max_grad_norm / (norms_all + CLIP_EPS)).clamp(max=1.0)

        out: dict[str, torch.Tensor] = {}
        for k, ps in enumerate(emb_ps):
            out[f"embeddings.{k}.weight"] = torch.einsum("b,bve->ve", clip, ps)
        for layer, (g, inp, h_prev, per_sample, g_sum) in enumerate(lstm_info):
            gc = g * clip[:, None, None]
            flat = gc.reshape(-1, gc.shape[-1]).t()
            for name, a_in, ps in (
                ("weight_ih", inp, per_sample[0]),
                ("weight_hh", h_prev, per_sample[1]),
            ):
                if ps is not None:
                    summed = torch.einsum("b,bgd->gd", clip, ps)
                else:
                    summed = flat @ a_in.reshape(-1, a_in.shape[-1])
                out[f"lstm.{name}_l{layer}"] = summed[unperm]
            b = (clip @ g_sum)[unperm]
            out[f"lstm.bias_ih_l{layer}"] = b
            out[f"lstm.bias_hh_l{layer}"] = b.clone()
        head_names = [n for n, _ in model.head.named_parameters()]
        for j, (a_in, du) in enumerate(zip(acts, dpre, strict=True)):
            duc = du * clip[:, None]
            out[f"head.{head_names[2 * j]}"] = duc.t() @ a_in.detach()
            out[f"head.{head_names[2 * j + 1]}"] = duc.sum(dim=0)
    ordered = {name: out[name] for name in params}
    norms_orig = torch.empty_like(norms_all)
    norms_orig[order] = norms_all
    return ordered, norms_orig, float(loss.detach())


class FastDPStep:
    """One DP-SGD step per call of :meth:`step`, with :func:`clipped_grad_sum`.

    Parameters
    ----------
    model : ChurnLSTM
        Trained in place (any engine; normally ``dp_engine="fast"``).
    optimizer : torch.optim.Optimizer
        Over ``model.parameters()``.
    noise_multiplier, max_grad_norm : float
    expected_batch_size : float
        ``sample_rate * n``; the noisy sum is divided by it.
    generator : torch.Generator
        Source of the noise.
    """

    def __init__(
        self,
        model: ChurnLSTM,
        optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        generator: torch.Generator,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.expected_batch_size = float(expected_batch_size)
        self.generator = generator

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """Clip, sum, noise, scale and apply; returns the batch's summed loss."""
        named = self.model.named_tensors()
        if int(batch["y"].shape[0]) == 0:
            grads = {n: torch.zeros_like(p) for n, p in named.items()}
            loss_sum = 0.0
        else:
            grads, _, loss_sum = clipped_grad_sum(self.model, batch, self.max_grad_norm)
        std = self.noise_multiplier * self.max_grad_norm
        for name, p in named.items():
            g = grads[name]
            if std > 0:
                g = g + torch.normal(
                    0.0, std, size=p.shape, generator=self.generator, dtype=p.dtype
                )
            p.grad = g / self.expected_batch_size
        from fedcrm.models.lstm import zero_padding_grads

        zero_padding_grads(self.model)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def close(self) -> None:
        """Nothing to release."""
