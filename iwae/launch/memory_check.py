"""Will a run fit in memory? Estimated from k, batch sizes and layer widths before any training.

A model's tensors are ``[samples, images, width]``, so memory grows with k x batch size x width:
``k=200000`` asks for about 100 GiB in one training step and would die out of memory after the
data were loaded and the logger started. The estimates here are a model of the code, built on
the "meta" device (shapes only, no memory), and deliberately on the high side:

- training step: autograd keeps every layer's output for the backward pass, so besides the
  ``LIVE_TENSORS`` output-layer tensors of `iwae.evaluation` each linear layer's output counts
  twice (pre- and post-tanh), plus parameters, gradients and Adam's two moments. Measured peaks
  (one thread, batch 20, k = 1,000 and 5,000) are 1.5 to 3 times below it.
- evaluation and the validation bound: `iwae.evaluation.chunk_plan`'s own model of a chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from iwae import ais
from iwae.errors import UserError
from iwae.evaluation import LIVE_TENSORS, chunk_plan, widest_layer
from iwae.layer_widths import measured_widths

# Adam: parameters, their gradients and two moments.
PARAMETER_COPIES = 4
# Outputs autograd keeps per linear layer (before and after its tanh).
SAVED_PER_LINEAR = 2


def _itemsize(model: nn.Module) -> int:
    return next(model.parameters()).element_size()


def _parameter_bytes(model: nn.Module) -> int:
    return PARAMETER_COPIES * sum(p.numel() for p in model.parameters()) * _itemsize(model)


def training_step_bytes(model: nn.Module, samples: int, batch_size: int) -> int:
    """Peak bytes of one training step with ``samples`` importance samples per image."""
    linear = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    saved = max(SAVED_PER_LINEAR * linear, SAVED_PER_LINEAR * sum(measured_widths(model)))
    per_row = LIVE_TENSORS * widest_layer(model) + saved
    return samples * batch_size * per_row * _itemsize(model) + _parameter_bytes(model)


def evaluation_bytes(
    model: nn.Module, images: int, k: int, chunk_size: int | None, max_bytes: int | None
) -> int:
    """Peak bytes of one chunk of the k-sample estimate, as `chunk_plan` lays it out."""
    images, chunk = chunk_plan(model, images, k, chunk_size, max_bytes)
    return images * chunk * _row_bytes(model) + _parameter_bytes(model)


def _row_bytes(model: nn.Module) -> int:
    """Bytes of one sample of one image in `chunk_plan`'s model of the evaluation."""
    return LIVE_TENSORS * widest_layer(model) * _itemsize(model)


def available_memory(accelerator: Any = "auto", strategy: Any = "auto") -> tuple[int, str] | None:
    """(free bytes, where) of the device the run uses; None when it cannot be told."""
    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        if any(s in str(strategy) for s in ("fork", "notebook")):
            return None  # asking would start CUDA here, and forked ranks could not use it
        return torch.cuda.mem_get_info()[0], "GPU"
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024, "CPU"
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(
    need: int, what: str, advice: str, device: tuple[Any, Any] = ("auto", "auto")
) -> None:
    """Raise a one-line `UserError` when ``need`` bytes exceed the memory available on
    ``device``, the trainer's (accelerator, strategy)."""
    free = available_memory(*device)
    if free is not None and need > free[0]:
        raise UserError(
            f"{what} needs about {gib(need)}, more than the {gib(free[0])} of {free[1]} memory "
            f"available; {advice}"
        )


def check_eval_memory(
    model: nn.Module, eval_cfg: Any, images: int, device: tuple[Any, Any]
) -> None:
    """The final k-sample evaluation (``eval.chunk_size`` samples of ``images`` at a time;
    ``eval.max_bytes`` caps it) fits."""
    max_bytes = eval_cfg.get("max_bytes")
    if max_bytes is not None and max_bytes < _row_bytes(model):
        raise UserError(
            f"eval.max_bytes={max_bytes} is too small for one sample of one image (that takes "
            f"{_row_bytes(model)} bytes); raise it, or set null for no cap"
        )
    need = evaluation_bytes(model, images, eval_cfg.k, eval_cfg.chunk_size, max_bytes)
    room = available_memory(*device)
    suggestion = f"eval.max_bytes={room[0] // 2}" if room else "eval.max_bytes=<bytes>"
    check_fits(
        need,
        f"the evaluation at eval.k={eval_cfg.k}, eval.chunk_size={eval_cfg.chunk_size} over "
        f"{images} test images a batch",
        f"lower eval.chunk_size or set {suggestion} (the estimate then streams in smaller chunks)",
        device,
    )

    check_ais_memory(model, eval_cfg, images, device)


def check_ais_memory(model: nn.Module, eval_cfg: Any, images: int, device: tuple[Any, Any]) -> None:
    """AIS and BDMC chains (``eval.ais.chains`` per image, `iwae.ais.images_per_pass` images
    at a time) fit: the chains of one image must fit ``eval.max_bytes``, one pass the device."""
    node = eval_cfg.get("ais") or {}
    bdmc_images = (eval_cfg.get("bdmc") or {}).get("images", 0)
    if not (node.get("steps", 0) or bdmc_images):
        return
    settings = ais.settings_from(node)
    per_pass = ais.images_per_pass(model, settings, eval_cfg.get("max_bytes"))
    chains = settings.chains + ais.TUNING_CHAINS
    need = min(per_pass, max(images, bdmc_images)) * chains * ais.row_bytes(model)
    check_fits(
        need + _parameter_bytes(model),
        f"AIS with eval.ais.chains={settings.chains} over {min(per_pass, images)} images a pass",
        "lower eval.ais.chains or set eval.max_bytes=<bytes> (fewer images a pass)",
        device,
    )
