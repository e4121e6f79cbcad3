"""M models of one architecture as one: parameters stacked along a leading member dimension.

Every member's parameters live in one row of a flat ``[M, P]`` buffer (``flat``); each weight
``[M, out, in]`` and bias ``[M, out]`` is a view into it, and each view's gradient is a view
into a flat ``[M, P]`` gradient buffer. A linear layer of all M members is one
``torch.baddbmm``; Adam (`iwae.fused.adam`) and the per-member non-finite check are a handful
of operations on the two flat buffers, whatever the number of layers.

Why by hand and not ``torch.func`` (``stack_module_state`` + ``functional_call`` + ``vmap``):
each member must draw its noise from its own generator (the stream a separate run of it would
draw), which ``vmap`` cannot do (``randomness="different"`` draws from one global stream);
and vmap's stacked parameters are separate tensors, so Adam and the finite check would cost
one kernel per parameter tensor. ``benchmarks/fused.py`` measures both routes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from iwae.model import (
    HALF_LOG_2PI,
    XL_MATMUL_MIN_K,
    IWAEModel,
    gaussian_log_prob,
    standard_normal_log_prob,
)

# The views share one row stride (P), so they are not dense; autograd still accumulates into
# the given .grad views in place (checked by tests/test_fused.py), but warns once about it.
warnings.filterwarnings("ignore", message=r"grad and param do not obey the gradient layout")


def _linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``[M, N, in] -> [M, N, out]`` for every member at once (weight ``[M, out, in]``)."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


class StackedIWAE:
    """``IWAEModel`` x M: the same architecture, M sets of parameters, one forward pass.

    Args:
        models: the members, all built from one model config (same parameter names and shapes).
    """

    def __init__(self, models: Sequence[IWAEModel]) -> None:
        template = models[0]
        self.template = template
        self.latent_dims = list(template.latent_dims)
        self.names = [name for name, _ in template.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in template.named_parameters()]
        for model in models[1:]:
            shapes = [tuple(p.shape) for _, p in model.named_parameters()]
            if shapes != self.shapes:
                raise ValueError("members of one fused group must share their architecture")
        rows = [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]
        self.flat = torch.stack(rows)  # [M, P]
        self.grad = torch.zeros_like(self.flat)
        self._make_views()

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def _make_views(self) -> None:
        self.params: dict[str, Tensor] = {}
        offset, m = 0, self.flat.shape[0]
        for name, shape in zip(self.names, self.shapes):
            n = 1
            for s in shape:
                n *= s
            view = self.flat[:, offset : offset + n].view(m, *shape)
            view.requires_grad_(True)
            view.grad = self.grad[:, offset : offset + n].view(m, *shape)
            self.params[name] = view
            offset += n

    def to(self, device: torch.device) -> StackedIWAE:
        self.flat = self.flat.to(device)
        self.grad = self.grad.to(device)
        self._make_views()
        return self

    def load_flat(self, flat: Tensor) -> None:
        """Overwrite every member's parameters (resume)."""
        with torch.no_grad():
            self.flat.copy_(flat)

    # --- one member as a plain IWAEModel -------------------------------------------------
    def member_state_dict(self, m: int) -> dict[str, Tensor]:
        """Member ``m``'s parameters under ``IWAEModel``'s names (copies, on the CPU)."""
        return {name: p[m].detach().cpu().clone() for name, p in self.params.items()}

    def member_model(self, m: int, model: IWAEModel | None = None) -> IWAEModel:
        """An ``IWAEModel`` holding member ``m``'s current parameters (on the buffers' device)."""
        if model is None:
            model = self._blank().to(self.flat.device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.params[name][m])
        return model

    def _blank(self) -> IWAEModel:
        import copy

        return copy.deepcopy(self.template).cpu()

    # --- the forward pass ------------------------------------------------------------------
    def _mlp(self, prefix: str, h: Tensor) -> Tensor:
        """A layer's tanh MLP (``net``), linear layers at even indices as `tanh_mlp` builds it."""
        i = 0
        while f"{prefix}.net.{i}.weight" in self.params:
            weight, bias = (
                self.params[f"{prefix}.net.{i}.weight"],
                self.params[f"{prefix}.net.{i}.bias"],
            )
            h = _linear(h, weight, bias)
            h = h.tanh_()  # in place: baddbmm's backward needs its inputs, not its output
            i += 2
        return h

    def _head(self, prefix: str, h: Tensor) -> Tensor:
        return _linear(h, self.params[f"{prefix}.head.weight"], self.params[f"{prefix}.head.bias"])

    def _gaussian(self, prefix: str, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self._head(prefix, self._mlp(prefix, h)).chunk(2, dim=-1)
        return mean, log_std

    def log_weights(self, x: Tensor, noise: Sequence[Tensor]) -> Tensor:
        """log w = log p(x, h) - log q(h | x) for every member, as `IWAEModel.log_weights`.

        Args:
            x: binary images ``[M, B, D]`` (each member its own minibatch).
            noise: per stochastic layer, standard normal noise ``[M, K, B, d_l]``.

        Returns:
            ``[M, K, B]`` log weights, every normalising constant included.
        """
        m, b = x.shape[:2]
        k = noise[0].shape[1]
        log_q: Tensor = x.new_zeros(())
        h, samples = x, []
        for layer, eps in enumerate(noise):
            inp = h if layer == 0 else h.reshape(m, k * b, -1)
            mean, log_std = self._gaussian(f"encoder.{layer}", inp)
            if layer == 0:  # once per image, broadcast over the k samples
                mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
            else:
                mean, log_std = mean.view(m, k, b, -1), log_std.view(m, k, b, -1)
            h = mean + torch.exp(log_std) * eps
            # (h - mean) / std is eps exactly, as in IWAEModel.log_weights
            log_q = log_q + (-0.5 * eps.square() - log_std).sum(-1) - eps.shape[-1] * HALF_LOG_2PI
            samples.append(h)
        log_p = standard_normal_log_prob(samples[-1])
        for i in range(len(samples) - 1, 0, -1):
            mean, log_std = self._gaussian(f"decoder.{i}", samples[i].reshape(m, k * b, -1))
            below = samples[i - 1]
            log_p = log_p + gaussian_log_prob(below, mean.view_as(below), log_std.view_as(below))
        return log_p + self._bernoulli_term(samples[0], x) - log_q

    def _bernoulli_term(self, h: Tensor, x: Tensor) -> Tensor:
        """sum_d x_d l_d - softplus(l_d), ``[M, K, B]``; x . l as a matmul from k = 8 on
        (the same trade as `iwae.model._bernoulli_term`)."""
        m, k, b, _ = h.shape
        a = self._mlp("decoder.0", h.reshape(m, k * b, -1))
        weight, bias = self.params["decoder.0.head.weight"], self.params["decoder.0.head.bias"]
        logits = _linear(a, weight, bias)  # [M, K*B, D]
        if k >= XL_MATMUL_MIN_K:
            xw = torch.bmm(x, weight)  # [M, B, hidden]
            xl = (a.view(m, k, b, -1) * xw.unsqueeze(1)).sum(-1)
            xl = xl + (x * bias.unsqueeze(1)).sum(-1).unsqueeze(1)
        else:
            xl = (x.unsqueeze(1) * logits.view(m, k, b, -1)).sum(-1)
        return xl - torch.nn.functional.softplus(logits).sum(-1).view(m, k, b)
