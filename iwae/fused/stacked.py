"""M models of one architecture as one: parameters stacked along a leading member dimension.

Every member's parameters live in one row of a flat ``[M, P]`` buffer (``flat``); each weight
(stored transposed, ``[M, in, out]``) and bias ``[M, out]`` is a view into it (`views`), so a
checkpoint, a member's weights and Adam's moments are rows of ``[M, P]`` buffers. A linear
layer of all M members is one ``torch.baddbmm``.

Why by hand and not ``torch.func`` (``stack_module_state`` + ``functional_call`` + ``vmap``):
each member must draw its noise from its own generator (the stream a separate run of it would
draw), which ``vmap`` cannot do (``randomness="different"`` draws from one global stream);
and vmap's stacked parameters are separate tensors, so Adam and the finite check would cost
one kernel per parameter tensor. ``benchmarks/fused.py`` measures both routes.
"""

from __future__ import annotations

import math
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


def _linear(h: Tensor, weight_t: Tensor, bias: Tensor) -> Tensor:
    """``[M, N, in] -> [M, N, out]`` for every member at once (``weight_t``: ``[M, in, out]``)."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight_t)


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
        model_shapes = [tuple(p.shape) for _, p in template.named_parameters()]
        for model in models[1:]:
            shapes = [tuple(p.shape) for _, p in model.named_parameters()]
            if shapes != model_shapes:
                raise ValueError("members of one fused group must share their architecture")
        # Weights are stored transposed, [in, out]: baddbmm(b, h, W^T) then takes W^T as it
        # lies and autograd's gradient of it comes out contiguous. Stored [out, in], every
        # weight's gradient was a transposing copy (measured: 4 ms a step for 6 members'
        # 784 x 200 weights on one CPU thread, a third of the step).
        self.transposed = {n for n, shape in zip(self.names, model_shapes) if len(shape) == 2}
        self.shapes = [
            shape[::-1] if name in self.transposed else shape
            for name, shape in zip(self.names, model_shapes)
        ]
        rows = [
            torch.cat(
                [self.model_layout(n, p.detach()).reshape(-1) for n, p in m.named_parameters()]
            )
            for m in models
        ]
        self.flat = torch.stack(rows)  # [M, P]
        self._make_views()

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def views(self, buffer: Tensor) -> list[Tensor]:
        """Per parameter, its ``[M, *shape]`` view into ``buffer`` (``[M, P]``), in the order of
        ``IWAEModel.named_parameters``."""
        out, offset, m = [], 0, buffer.shape[0]
        for shape in self.shapes:
            n = math.prod(shape)
            out.append(buffer[:, offset : offset + n].view(m, *shape))
            offset += n
        return out

    def _make_views(self) -> None:
        # Leaves that autograd gives their own (contiguous) .grad: a given .grad view into a
        # flat buffer would cost a zero fill and an accumulating add per step.
        self.params: dict[str, Tensor] = dict(zip(self.names, self.views(self.flat)))
        for view in self.params.values():
            view.requires_grad_(True)

    def grads(self) -> list[Tensor]:
        """The gradients of the last backward pass, in `views` order; cleared for the next."""
        grads = [p.grad for p in self.params.values()]
        for p in self.params.values():
            p.grad = None
        return [
            g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params.values())
        ]

    def to(self, device: torch.device) -> StackedIWAE:
        self.flat = self.flat.to(device)
        self._make_views()
        return self

    def load_flat(self, flat: Tensor) -> None:
        """Overwrite every member's parameters (resume)."""
        with torch.no_grad():
            self.flat.copy_(flat)

    # --- one member as a plain IWAEModel -------------------------------------------------
    def model_layout(self, name: str, tensor: Tensor) -> Tensor:
        """``tensor`` (one member's parameter ``name`` or its gradient) in ``IWAEModel``'s
        layout, from the stored one, or back: a weight is transposed, a bias is as it is."""
        return tensor.transpose(-1, -2) if name in self.transposed else tensor

    def member_state_dict(self, m: int) -> dict[str, Tensor]:
        """Member ``m``'s parameters under ``IWAEModel``'s names (copies, on the CPU)."""
        return {
            name: self.model_layout(name, p[m].detach()).cpu().contiguous().clone()
            for name, p in self.params.items()
        }

    def member_model(self, m: int, model: IWAEModel | None = None) -> IWAEModel:
        """An ``IWAEModel`` holding member ``m``'s current parameters (on the buffers' device)."""
        if model is None:
            model = self._blank().to(self.flat.device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.model_layout(name, self.params[name][m]))
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
            xl = _member_xl(a.view(m, k, b, -1), x, weight, bias)
        else:
            xl = (x.unsqueeze(1) * logits.view(m, k, b, -1)).sum(-1)
        return xl - torch.nn.functional.softplus(logits).sum(-1).view(m, k, b)


def _member_xl(a: Tensor, x: Tensor, weight_t: Tensor, bias: Tensor) -> Tensor:
    """x . l = a . (W^T x) + b . x, ``[M, K, B]``, member by member with the very operations
    of `iwae.model._bernoulli_term`: batched over members, the sums ran in another order
    (one batched einsum or matrix-vector product over M members rounds differently from M
    separate ones), and training amplified that last-bit difference at k = 50 into a
    different end point. These are three small products per member, a few percent of a step.
    """
    return torch.stack(
        [
            torch.einsum("kbh,bh->kb", a[i], x[i] @ weight_t[i].transpose(0, 1)) + x[i] @ bias[i]
            for i in range(a.shape[0])
        ]
    )
