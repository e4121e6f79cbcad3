"""The plain-PyTorch reference: the paper's model written the way a careful user would write
it without this framework (``torch.distributions``, separate mean and log-std layers, a data
tensor sliced by index, ``torch.optim.Adam``, no Lightning).

It is the yardstick of ``benchmarks.train_step`` and the ground truth of
``tests/test_fast_path.py``: `ReferenceIWAE.load_from` copies an `IWAEModel`'s weights so that
both compute the same function, and `ReferenceIWAE.log_weights` takes a generator so both can
draw the same noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Normal

from iwae.model import IWAEModel, tanh_mlp


class GaussianMLP(nn.Module):
    """tanh MLP, then separate mean and log-std linear layers (the textbook layout)."""

    def __init__(self, sizes: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.net = tanh_mlp(sizes)
        self.mean = nn.Linear(sizes[-1], out_dim)
        self.log_std = nn.Linear(sizes[-1], out_dim)

    def forward(self, h: Tensor) -> Normal:
        z = self.net(h)
        return Normal(self.mean(z), torch.exp(self.log_std(z)))


class BernoulliMLP(nn.Module):
    def __init__(self, sizes: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.net = tanh_mlp(sizes)
        self.logits = nn.Linear(sizes[-1], out_dim)

    def forward(self, h: Tensor) -> Bernoulli:
        return Bernoulli(logits=self.logits(self.net(h)))


class ReferenceIWAE(nn.Module):
    """The same model as `IWAEModel` (same layer sizes), without any of its shortcuts."""

    def __init__(
        self,
        input_dim: int = 784,
        latent_dims: Sequence[int] = (50,),
        hidden_dims: Sequence[Sequence[int]] = ((200, 200),),
    ) -> None:
        super().__init__()
        below = [input_dim, *latent_dims[:-1]]
        self.encoder = nn.ModuleList(
            GaussianMLP([n_in, *hid], d) for n_in, hid, d in zip(below, hidden_dims, latent_dims)
        )
        self.decoder = nn.ModuleList(
            [BernoulliMLP([latent_dims[0], *hidden_dims[0][::-1]], input_dim)]
        )
        self.decoder.extend(
            GaussianMLP([latent_dims[i + 1], *hidden_dims[i + 1][::-1]], latent_dims[i])
            for i in range(len(latent_dims) - 1)
        )
        self.latent_dims = list(latent_dims)

    @torch.no_grad()
    def load_from(self, model: IWAEModel) -> ReferenceIWAE:
        """Copy ``model``'s weights, splitting each fused (mean, log_std) head in two."""
        for mine, theirs in zip([*self.encoder, *self.decoder], [*model.encoder, *model.decoder]):
            for a, b in zip(mine.net, theirs.net):
                if isinstance(a, nn.Linear):
                    a.weight.copy_(b.weight)
                    a.bias.copy_(b.bias)
            if isinstance(mine, GaussianMLP):
                d = mine.mean.out_features
                mine.mean.weight.copy_(theirs.head.weight[:d])
                mine.mean.bias.copy_(theirs.head.bias[:d])
                mine.log_std.weight.copy_(theirs.head.weight[d:])
                mine.log_std.bias.copy_(theirs.head.bias[d:])
            else:
                mine.logits.weight.copy_(theirs.head.weight)
                mine.logits.bias.copy_(theirs.head.bias)
        return self

    def log_weights(self, x: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``[k, B]`` log p(x, h) - log q(h | x), h ~ q by reparameterisation.

        With a generator the noise is ``torch.randn`` drawn layer by layer, ``[k, B, d_l]``,
        the same draws `IWAEModel.log_weights` makes; without one, ``Normal.rsample``.
        """
        h, log_q, samples = x, 0.0, []
        for layer in self.encoder:
            q = layer(h)
            if generator is None:
                h = q.rsample((k,)) if h is x else q.rsample()
            else:
                shape = (k, *q.loc.shape[-2:])
                h = q.loc + q.scale * torch.randn(shape, generator=generator, dtype=x.dtype)
            log_q = log_q + q.log_prob(h).sum(-1)
            samples.append(h)
        prior = Normal(torch.zeros_like(samples[-1]), torch.ones_like(samples[-1]))
        log_p = prior.log_prob(samples[-1]).sum(-1)
        for i in range(len(samples) - 1, 0, -1):
            log_p = log_p + self.decoder[i](samples[i]).log_prob(samples[i - 1]).sum(-1)
        px = self.decoder[0](samples[0])
        log_p = log_p + px.log_prob(x.expand_as(px.logits)).sum(-1)
        return log_p - log_q


def iwae_loss(log_w: Tensor) -> Tensor:
    """Minus the IWAE bound, averaged over the minibatch: ``[k, B] -> []``."""
    return -(torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).mean()


def reference_train(
    model: ReferenceIWAE,
    data: Tensor,
    k: int,
    steps: int,
    batch_size: int = 20,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_step_end: Callable[[], None] | None = None,
    loss_fn: Callable[[Tensor], Tensor] | None = None,
) -> torch.optim.Optimizer:
    """``steps`` Adam steps of the IWAE bound on dynamically binarized minibatches of ``data``
    (a random permutation, sliced): the loop the framework is measured against.
    ``loss_fn``: the minibatch's loss in place of ``iwae_loss(model.log_weights(x, k))``
    (the same function compiled, for one)."""
    loss_fn = loss_fn or (lambda x: iwae_loss(model.log_weights(x, k)))
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g)
    done = 0
    while done < steps:
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if done == steps:
                break
            x = torch.bernoulli(data[order[start : start + batch_size]], generator=g)
            loss = loss_fn(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if on_step_end is not None:
                on_step_end()
    return optimizer
