"""The paper's generative model p(x, h) and inference network q(h | x) (Burda et al. 2015, sec. 5).

Stochastic layers are diagonal Gaussians whose mean is linear and whose standard deviation is
exp(linear) in the output of a tanh MLP; the prior is N(0, I); the output is Bernoulli.

Log densities are written out by hand rather than through ``torch.distributions``: at batch
size 20 the distribution objects' construction and argument checks cost more than the
arithmetic. ``tests/test_foundation_model.py`` checks every density against ``torch.distributions``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iwae.errors import UserError

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(log_std))^2), summed over the last dimension."""
    eps = (z - mean) * torch.exp(-log_std)
    return (-0.5 * eps.square() - log_std).sum(-1) - z.shape[-1] * HALF_LOG_2PI


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * z.square().sum(-1) - z.shape[-1] * HALF_LOG_2PI


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)), summed over the last dimension (x broadcasts)."""
    return (x * logits - F.softplus(logits)).sum(-1)


def tanh_mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Tanh()]
    return nn.Sequential(*layers)


def _is_width(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_widths(values: object) -> bool:
    """A list of layer widths (possibly empty: no hidden layer)."""
    return (
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and all(_is_width(v) for v in values)
    )


def _plain(value: object) -> object:
    """Config lists as plain lists, for messages."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


class GaussianLayer(nn.Module):
    """A tanh MLP followed by one fused linear head giving (mean, log_std) of a Gaussian."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.net = tanh_mlp([in_dim, *hidden])
        self.head = nn.Linear(([in_dim, *hidden])[-1], 2 * out_dim)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.head(self.net(h)).chunk(2, dim=-1)
        return mean, log_std


class BernoulliLayer(nn.Module):
    """A tanh MLP followed by a linear layer giving Bernoulli logits."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.net = tanh_mlp([in_dim, *hidden])
        self.head = nn.Linear(([in_dim, *hidden])[-1], out_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.head(self.net(h))


def _log_q_detached(
    layer: GaussianLayer, h_in: Tensor, h: Tensor, mean: Tensor, log_std: Tensor, first: bool
) -> Tensor:
    """log q(h | h_in) with q's parameters detached but its input ``h_in`` live.

    For the first layer h_in is the data, so detaching mean and log_std is enough. A deeper
    layer's input is itself a sample that depends on phi: its path through q(h | h_in) is part
    of the STL/DReG gradient, so q is re-evaluated with detached parameters (one extra forward
    pass through that layer, only when ``detach_q``).
    """
    if first:
        return gaussian_log_prob(h, mean.detach(), log_std.detach())
    frozen = {name: p.detach() for name, p in layer.named_parameters()}
    q_mean, q_log_std = torch.func.functional_call(layer, frozen, (h_in,))
    return gaussian_log_prob(h, q_mean, q_log_std)


class IWAEModel(nn.Module):
    """Deep latent Gaussian model with L stochastic layers and its inference network.

    Args:
        input_dim: pixels per image (D).
        latent_dims: sizes of h_1..h_L (the paper: ``[50]`` or ``[100, 50]``).
        hidden_dims: the deterministic tanh layers below each stochastic layer, e.g.
            ``[[200, 200], [100, 100]]``: q(h_l | h_{l-1}) uses ``hidden_dims[l-1]`` and the
            generative p(h_{l-1} | h_l) mirrors it.
    """

    def __init__(
        self,
        input_dim: int,
        latent_dims: Sequence[int] = (50,),
        hidden_dims: Sequence[Sequence[int]] = ((200, 200),),
    ) -> None:
        super().__init__()
        lists = all(isinstance(v, Sequence) for v in (latent_dims, hidden_dims))
        if not lists or len(latent_dims) == 0 or len(latent_dims) != len(hidden_dims):
            raise UserError(
                f"model.latent_dims {_plain(latent_dims)} and model.hidden_dims "
                f"{_plain(hidden_dims)} must be non-empty lists of the same length"
            )
        if input_dim < 1 or not all(_is_width(d) for d in latent_dims):
            raise UserError(
                f"model.latent_dims must be positive integers, got {list(latent_dims)} "
                f"(input {input_dim})"
            )
        if not all(_is_widths(h) for h in hidden_dims):
            raise UserError(
                f"model.hidden_dims must be one list of positive layer widths per stochastic "
                f"layer, like [[200,200]], got {_plain(hidden_dims)}"
            )
        self.input_dim, self.latent_dims = input_dim, list(latent_dims)
        below = [input_dim, *latent_dims[:-1]]  # what each stochastic layer conditions on
        self.encoder = nn.ModuleList(
            GaussianLayer(n_in, hid, n_out)
            for n_in, hid, n_out in zip(below, hidden_dims, latent_dims)
        )
        # decoder[l] models h_l given h_{l+1} (h_0 = x); decoder[0] is the Bernoulli output.
        self.decoder = nn.ModuleList(
            [BernoulliLayer(latent_dims[0], hidden_dims[0][::-1], input_dim)]
        )
        self.decoder.extend(
            GaussianLayer(latent_dims[i + 1], hidden_dims[i + 1][::-1], latent_dims[i])
            for i in range(len(latent_dims) - 1)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights and zero biases, as the paper's released code."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def init_output_bias(self, pixel_mean: Tensor) -> None:
        """Output bias := logit of the training mean pixel, clipped to [0.001, 0.999]."""
        p = pixel_mean.clamp(1e-3, 1 - 1e-3).to(self.decoder[0].head.bias)
        self.decoder[0].head.bias.copy_(torch.log(p) - torch.log1p(-p))

    def inference_parameters(self) -> list[nn.Parameter]:
        """Parameters of q(h | x) (phi)."""
        return list(self.encoder.parameters())

    def generative_parameters(self) -> list[nn.Parameter]:
        """Parameters of p(x, h) (theta)."""
        return list(self.decoder.parameters())

    def log_weights(
        self,
        x: Tensor,
        k: int,
        generator: torch.Generator | None = None,
        detach_q: bool = False,
    ) -> Tensor:
        """log w = log p(x, h) - log q(h | x) at k samples h ~ q(h | x).

        Args:
            x: binary images ``[B, D]``.
            k: number of importance samples per image.
            generator: source of the Gaussian noise (for reproducible evaluation).
            detach_q: evaluate log q with the parameters of q detached (the samples still
                depend on them): the form the STL and DReG estimators differentiate.

        Returns:
            ``[k, B]``, every normalising constant included, so ``iwae_bound`` of it is a
            lower bound on log p(x) in nats.
        """
        log_q = x.new_zeros(())
        h, samples = x, []
        for layer in self.encoder:
            h_in = h
            # first layer: [B, d], once per image; deeper: [k, B, d]
            mean, log_std = _linear(layer.head, _tanh_mlp(layer.net, h)).chunk(2, dim=-1)
            eps = torch.randn(
                (k, *mean.shape[-2:]), generator=generator, device=x.device, dtype=x.dtype
            )
            h = mean + torch.exp(log_std) * eps
            if detach_q:
                log_q = log_q + _log_q_detached(layer, h_in, h, mean, log_std, first=h_in is x)
            else:  # (h - mean) / std is eps exactly: skip recomputing it
                log_q = (
                    log_q + (-0.5 * eps.square() - log_std).sum(-1) - eps.shape[-1] * HALF_LOG_2PI
                )
            samples.append(h)
        log_p = standard_normal_log_prob(samples[-1])
        for i in range(len(samples) - 1, 0, -1):
            layer = self.decoder[i]
            mean, log_std = _linear(layer.head, _tanh_mlp(layer.net, samples[i])).chunk(2, -1)
            log_p = log_p + gaussian_log_prob(samples[i - 1], mean, log_std)
        log_p = log_p + _bernoulli_term(self.decoder[0], samples[0], x)
        return log_p - log_q

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples from p: the Bernoulli means of x, ``[n, D]``."""
        device = self.decoder[0].head.weight.device
        h = torch.randn(n, self.latent_dims[-1], generator=generator, device=device)
        for i in range(len(self.latent_dims) - 1, 0, -1):
            mean, log_std = self.decoder[i](h)
            h = mean + torch.exp(log_std) * torch.randn(
                mean.shape, generator=generator, device=device
            )
        return torch.sigmoid(self.decoder[0](h))

    # --- densities at given latents, for AIS (`iwae.ais`): z is h_1..h_L concatenated ------
    def split_latents(self, z: Tensor) -> tuple[Tensor, ...]:
        """``[..., sum d_l]`` -> (h_1 ``[..., d_1]``, ..., h_L)."""
        return z.split(self.latent_dims, dim=-1)

    def sample_q(self, x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, B, sum d_l]`` draws h ~ q(h | x) for ``x`` ``[B, D]``, the Gaussian noise
        drawn in the order and shapes of `log_weights`: one generator state, the same h."""
        h, hs = x, []
        for layer in self.encoder:
            mean, log_std = layer(h)
            eps = torch.randn(
                (n, *mean.shape[-2:]), generator=generator, device=x.device, dtype=x.dtype
            )
            h = mean + torch.exp(log_std) * eps
            hs.append(h)
        return torch.cat(hs, dim=-1)

    def sample_prior(
        self, shape: Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """``[*shape, sum d_l]`` ancestral draws h ~ p(h), top layer first."""
        like = self.decoder[0].head.weight
        top = torch.randn((*shape, self.latent_dims[-1]), generator=generator, device=like.device)
        hs = [top.to(like.dtype)]
        for i in range(len(self.latent_dims) - 1, 0, -1):
            mean, log_std = self.decoder[i](hs[0])
            noise = torch.randn(mean.shape, generator=generator, device=like.device)
            hs.insert(0, mean + torch.exp(log_std) * noise.to(like.dtype))
        return torch.cat(hs, dim=-1)

    def sample_joint(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` exact draws (h ``[n, sum d_l]``, binary x ``[n, D]``) of p(h) p(x | h_1)."""
        z = self.sample_prior((n,), generator)
        probs = torch.sigmoid(self.decoder[0](self.split_latents(z)[0]))
        u = torch.rand(probs.shape, generator=generator, device=probs.device)
        return z, (u.to(probs.dtype) < probs).to(probs.dtype)

    def log_q(self, x: Tensor, z: Tensor) -> Tensor:
        """log q(h | x) ``[n, B]`` at ``z`` ``[n, B, sum d_l]``, every constant included."""
        total, below = z.new_zeros(z.shape[:-1]), x
        for layer, h in zip(self.encoder, self.split_latents(z)):
            total = total + gaussian_log_prob(h, *layer(below))
            below = h
        return total

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(h) = log p(h_L) + sum_l log p(h_l | h_{l+1}), ``[n, B]``."""
        hs = self.split_latents(z)
        total = standard_normal_log_prob(hs[-1])
        for i in range(len(hs) - 1, 0, -1):
            total = total + gaussian_log_prob(hs[i - 1], *self.decoder[i](hs[i]))
        return total

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, h) ``[n, B]``: `log_prior` plus the Bernoulli log-likelihood of ``x``."""
        h1 = self.split_latents(z)[0]
        return self.log_prior(z) + bernoulli_log_prob(x, self.decoder[0](h1))

    @torch.no_grad()
    def encoder_means(
        self, x: Tensor, n_samples: int = 100, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """E_q[h_l | x] for every stochastic layer, each ``[B, d_l]``.

        The first layer's mean is exact; a deeper layer's is averaged over ``n_samples`` draws
        of the layers below it.
        """
        mean, log_std = self.encoder[0](x)
        means = [mean]
        h = mean + torch.exp(log_std) * torch.randn(
            (n_samples, *mean.shape), generator=generator, device=x.device
        )
        for layer in self.encoder[1:]:
            mean, log_std = layer(h)
            means.append(mean.mean(0))
            h = mean + torch.exp(log_std) * torch.randn(
                mean.shape, generator=generator, device=x.device
            )
        return means


# --- the fast path of `IWAEModel.log_weights` ------------------------------------------------
# Same functions as the layers' forward methods, written so that the [k, B, width] tensors,
# which dominate the k=5000 evaluation, are allocated and traversed as few times as possible
# (benchmarks/evaluate.py; docs/performance.md). tests/test_fast_path.py checks the result
# and its gradients against torch.distributions.

# From this many samples on, sum_d x_d * logits_d is taken as a [B, hidden] matmul instead of
# a pass over the [k, B, D] logits: the matmul costs B * D * hidden multiply-adds once, the
# pass k * B * D elementwise operations, about 50 times dearer each on a CPU.
XL_MATMUL_MIN_K = 8


def _linear(layer: nn.Linear, h: Tensor) -> Tensor:
    return F.linear(h, layer.weight, layer.bias)


def _tanh_mlp(net: nn.Sequential, h: Tensor) -> Tensor:
    """``net(h)`` with tanh applied in place to each linear layer's fresh output (a linear
    layer's backward needs its input, not its output, so this is safe under autograd too)."""
    fresh = False
    for module in net:
        if isinstance(module, nn.Tanh) and fresh:
            h = h.tanh_()
        else:
            h = _linear(module, h) if isinstance(module, nn.Linear) else module(h)
        fresh = isinstance(module, nn.Linear)
    return h


def _bernoulli_term(layer: BernoulliLayer, h: Tensor, x: Tensor) -> Tensor:
    """``bernoulli_log_prob(x, layer(h))``: sum_d x_d l_d - softplus(l_d), ``[k, B]``.

    x . l is computed from the last hidden layer a as a . (W^T x) + b . x when k is large,
    so the only pass over the ``[k, B, D]`` logits is softplus and its sum; without autograd
    the softplus overwrites the logits rather than allocating a second ``[k, B, D]`` tensor.
    """
    a = _tanh_mlp(layer.net, h)
    logits = _linear(layer.head, a)
    if a.dim() == 3 and a.shape[0] >= XL_MATMUL_MIN_K:
        x = x.to(a.dtype)  # a matmul does not promote as `x * logits` does (bool, uint8 data)
        xl = torch.einsum("kbh,bh->kb", a, x @ layer.head.weight) + x @ layer.head.bias
    else:
        xl = (x * logits).sum(-1)
    if torch.is_grad_enabled():
        return xl - F.softplus(logits).sum(-1)
    # F.softplus has no out=; ATen's out overload is the same kernel (beta 1, threshold 20)
    return xl - torch.ops.aten.softplus.out(logits, 1, 20, out=logits).sum(-1)
