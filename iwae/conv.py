"""A convolutional encoder and decoder for 28 x 28 binary images (``model=conv``).

q(h | x) is a diagonal Gaussian whose mean and log standard deviation come from two strided
convolutions (28 -> 14 -> 7) and one linear layer; p(x | h) is Bernoulli with logits from one
linear layer and two transposed convolutions (7 -> 14 -> 28) plus a per-pixel output bias; the
prior is N(0, I). One stochastic layer of 50 units by default, like the paper's one-layer model.

It is built only on what every tool asks of a model (`iwae.contract`), as a plug-in of one's
own would be, and reuses the density functions of `iwae.model`, so its log weights carry every
constant: the logged bound is a lower bound on log p(x) in nats. Images arrive flat, ``[B, 784]``,
and are reshaped here.

With the default channels (8, 32) every hidden activation is 1,568 numbers wide (8 x 14 x 14
and 32 x 7 x 7). The memory checks measure the feature maps in one pass
(`iwae.layer_widths`), so wider channels are sized as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from iwae.errors import UserError
from iwae.model import (
    HALF_LOG_2PI,
    _plain,
    bernoulli_log_prob,
    gaussian_log_prob,
    standard_normal_log_prob,
)

SIDE = 28  # image side; two stride-2 convolutions take it to 7
PIXELS = SIDE * SIDE
KERNEL, STRIDE, PADDING = 4, 2, 1  # halves the side exactly (28 -> 14 -> 7) and back


def _positive_ints(values: object, length: int) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and len(values) == length
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    )


class ConvEncoder(nn.Module):
    """``[B, 784]`` images -> (mean, log_std) of q(h | x), each ``[B, latent]``."""

    def __init__(self, channels: Sequence[int], latent: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, KERNEL, STRIDE, PADDING),
            nn.ELU(),
            nn.Conv2d(c1, c2, KERNEL, STRIDE, PADDING),
            nn.ELU(),
        )
        self.head = nn.Linear(c2 * (SIDE // 4) ** 2, 2 * latent)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.convs(x.reshape(-1, 1, SIDE, SIDE)).flatten(1)
        mean, log_std = self.head(features).chunk(2, dim=-1)
        return mean.reshape(*x.shape[:-1], -1), log_std.reshape(*x.shape[:-1], -1)


class ConvDecoder(nn.Module):
    """``[..., latent]`` latents -> ``[..., 784]`` Bernoulli logits."""

    def __init__(self, channels: Sequence[int], latent: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.c2 = c2
        self.fc = nn.Linear(latent, c2 * (SIDE // 4) ** 2)
        self.deconvs = nn.Sequential(
            nn.ELU(),
            nn.ConvTranspose2d(c2, c1, KERNEL, STRIDE, PADDING),
            nn.ELU(),
            # no bias here: `bias` below gives each pixel its own (set from the data's mean)
            nn.ConvTranspose2d(c1, 1, KERNEL, STRIDE, PADDING, bias=False),
        )
        self.bias = nn.Parameter(torch.zeros(PIXELS))

    def forward(self, h: Tensor) -> Tensor:
        lead = h.shape[:-1]
        a = self.fc(h.reshape(-1, h.shape[-1])).view(-1, self.c2, SIDE // 4, SIDE // 4)
        logits = self.deconvs(a).flatten(1) + self.bias
        return logits.reshape(*lead, PIXELS)


class ConvModel(nn.Module):
    """A convolutional VAE/IWAE model: one Gaussian stochastic layer, Bernoulli pixels.

    Args:
        input_dim: pixels per image; must be 784 (28 x 28).
        latent_dims: ``[d]``, the one stochastic layer's size (a list, as ``model=one_layer``
            writes it).
        channels: ``[c1, c2]``, the channels after the first and second strided convolution
            (the decoder mirrors them).
    """

    def __init__(
        self,
        input_dim: int,
        latent_dims: Sequence[int] = (50,),
        channels: Sequence[int] = (8, 32),
    ) -> None:
        super().__init__()
        if input_dim != PIXELS:
            raise UserError(
                f"model=conv is for 28x28 images (784 pixels), but the data has {input_dim} "
                "pixels an image; use model=one_layer or model=two_layer for other sizes"
            )
        if not _positive_ints(latent_dims, 1):
            raise UserError(
                f"model.latent_dims must be one positive integer in a list, like [50] (the "
                f"conv model has one stochastic layer), got {_plain(latent_dims)}"
            )
        if not _positive_ints(channels, 2):
            raise UserError(
                f"model.channels must be two positive integers, like [8,32], got {_plain(channels)}"
            )
        self.input_dim, self.latent_dims = input_dim, [int(latent_dims[0])]
        latent = self.latent_dims[0]
        # ModuleLists of one layer each, as `IWAEModel` names them: encoder[0](x) -> (mean,
        # log_std) and decoder[0](h) -> logits serve the tools that look at the first layer.
        self.encoder = nn.ModuleList([ConvEncoder(channels, latent)])
        self.decoder = nn.ModuleList([ConvDecoder(channels, latent)])

    @torch.no_grad()
    def init_output_bias(self, pixel_mean: Tensor) -> None:
        """Output bias := logit of the training mean pixel, clipped to [0.001, 0.999]."""
        bias = self.decoder[0].bias
        p = pixel_mean.clamp(1e-3, 1 - 1e-3).to(bias)
        bias.copy_(torch.log(p) - torch.log1p(-p))

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
        """log w = log p(x, h) - log q(h | x) at k samples h ~ q(h | x), ``[k, B]``.

        Every normalising constant included, as `iwae.model.IWAEModel.log_weights` (whose
        arguments these are); the noise is drawn as `sample_q` draws it.
        """
        mean, log_std = self.encoder[0](x)
        eps = torch.randn((k, *mean.shape), generator=generator, device=x.device, dtype=x.dtype)
        h = mean + torch.exp(log_std) * eps
        if detach_q:  # STL, DReG: q's parameters held constant, the path through h kept
            log_q = gaussian_log_prob(h, mean.detach(), log_std.detach())
        else:  # (h - mean) / std is eps exactly
            log_q = (-0.5 * eps.square() - log_std).sum(-1) - eps.shape[-1] * HALF_LOG_2PI
        return self.log_joint(x, h) - log_q

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Samples from p: the Bernoulli means of x, ``[n, 784]``."""
        return torch.sigmoid(self.decoder[0](self.sample_prior((n,), generator)))

    # --- densities at given latents, for AIS and BDMC (`iwae.ais`) -----------------------------
    def split_latents(self, z: Tensor) -> tuple[Tensor, ...]:
        """``[..., d]`` -> (h_1,): one stochastic layer."""
        return (z,)

    def sample_q(self, x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``[n, B, d]`` draws h ~ q(h | x), the noise as `log_weights` draws it."""
        mean, log_std = self.encoder[0](x)
        eps = torch.randn((n, *mean.shape), generator=generator, device=x.device, dtype=x.dtype)
        return mean + torch.exp(log_std) * eps

    def sample_prior(
        self, shape: Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """``[*shape, d]`` draws h ~ N(0, I), in the model's dtype."""
        like = self.decoder[0].bias
        h = torch.randn((*shape, self.latent_dims[0]), generator=generator, device=like.device)
        return h.to(like.dtype)

    def sample_joint(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` exact draws (h ``[n, d]``, binary x ``[n, 784]``) of p(h) p(x | h)."""
        z = self.sample_prior((n,), generator)
        probs = torch.sigmoid(self.decoder[0](z))
        u = torch.rand(probs.shape, generator=generator, device=probs.device)
        return z, (u.to(probs.dtype) < probs).to(probs.dtype)

    def log_q(self, x: Tensor, z: Tensor) -> Tensor:
        """log q(h | x) ``[n, B]`` at ``z`` ``[n, B, d]``, every constant included."""
        return gaussian_log_prob(z, *self.encoder[0](x))

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(h; 0, I), ``[n, B]``."""
        return standard_normal_log_prob(z)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, h) ``[n, B]``: `log_prior` plus the Bernoulli log-likelihood of ``x``."""
        return self.log_prior(z) + bernoulli_log_prob(x, self.decoder[0](z))

    @torch.no_grad()
    def encoder_means(
        self, x: Tensor, n_samples: int = 100, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """[E_q[h | x]] ``[B, d]``: exact (one Gaussian layer; ``n_samples`` is not needed)."""
        return [self.encoder[0](x)[0]]
