"""A network of one's own, in one file outside the package: one Gaussian stochastic layer
between ReLU MLPs, written against the model contract (`iwae.contract`) from scratch.

Every method below is one a tool of the project calls: training (``log_weights``, the two
parameter lists), the k = 5000 evaluation (``log_weights`` with a ``generator``), active units
(``encoder_means``), AIS and BDMC (``input_dim``, ``sample_q``, ``sample_prior``, ``log_q``,
``log_prior``, ``log_joint``, ``sample_joint``) and the sample grid (``sample``).
``init_output_bias`` is optional. The densities come from `iwae.model`, so every constant is
included and the logged bound is a true lower bound on log p(x) in nats.

    PYTHONPATH=examples/small_network python train.py plugins=[mynet] model=relu_mlp \
        hydra.searchpath=[file://examples/small_network/conf]
"""

import torch
from torch import Tensor, nn

from iwae.model import bernoulli_log_prob, gaussian_log_prob, standard_normal_log_prob


def relu_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


class ReluMLP(nn.Module):
    def __init__(self, input_dim: int, latent: int = 20, hidden: int = 256) -> None:
        super().__init__()
        self.input_dim, self.latent = input_dim, latent
        self.encoder = relu_mlp([input_dim, hidden, 2 * latent])  # -> (mean, log_std)
        self.decoder = relu_mlp([latent, hidden, input_dim])  # -> Bernoulli logits

    # --- training and the k-sample evaluation -------------------------------------------------
    def generative_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    def inference_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    @torch.no_grad()
    def init_output_bias(self, pixel_mean: Tensor) -> None:
        p = pixel_mean.clamp(1e-3, 1 - 1e-3)
        self.decoder[-1].bias.copy_(torch.log(p) - torch.log1p(-p))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of q(h | x); `iwae.load(...).encode` calls it too."""
        mean, log_std = self.encoder(x).chunk(2, dim=-1)
        return mean, log_std

    def log_weights(self, x: Tensor, k: int, generator=None, detach_q: bool = False) -> Tensor:
        """``[k, B]``: log p(x, h) - log q(h | x) for k draws h ~ q(h | x)."""
        mean, log_std = self.encode(x)
        z = mean + log_std.exp() * torch.randn(
            (k, *mean.shape), generator=generator, device=x.device, dtype=x.dtype
        )
        if detach_q:  # STL and DReG: q's parameters held constant inside log q
            mean, log_std = mean.detach(), log_std.detach()
        return self.log_joint(x, z) - gaussian_log_prob(z, mean, log_std)

    # --- active units, AIS and BDMC -----------------------------------------------------------
    def encoder_means(self, x: Tensor, n_samples: int = 100, generator=None) -> list[Tensor]:
        return [self.encode(x)[0]]

    def sample_q(self, x: Tensor, n: int, generator=None) -> Tensor:
        mean, log_std = self.encode(x)
        eps = torch.randn((n, *mean.shape), generator=generator, device=x.device, dtype=x.dtype)
        return mean + log_std.exp() * eps

    def sample_prior(self, shape, generator=None) -> Tensor:
        weight = self.decoder[0].weight
        z = torch.randn((*shape, self.latent), generator=generator, device=weight.device)
        return z.to(weight.dtype)

    def log_q(self, x: Tensor, z: Tensor) -> Tensor:
        return gaussian_log_prob(z, *self.encode(x))

    def log_prior(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.log_prior(z) + bernoulli_log_prob(x, self.decoder(z))

    def sample_joint(self, n: int, generator=None) -> tuple[Tensor, Tensor]:
        z = self.sample_prior((n,), generator)
        probs = torch.sigmoid(self.decoder(z))
        u = torch.rand(probs.shape, generator=generator, device=probs.device)
        return z, (u.to(probs.dtype) < probs).to(probs.dtype)

    # --- the sample grid ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator=None) -> Tensor:
        return torch.sigmoid(self.decoder(self.sample_prior((n,), generator)))
