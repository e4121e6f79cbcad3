"""Building the optimizer for the training fast path.

Two costs that the paper's ten million batch-20 steps make visible, measured with
``python -m benchmarks.train_step`` (docs/performance.md):

- ``torch.optim.Adam``'s default on the CPU is its per-tensor Python loop (about a dozen small
  ops per parameter tensor per step); the fused kernel does the same update in one call per
  tensor and is about 3x cheaper for this model.
- ``Adam.step`` asks, at every step, whether an accelerator is capturing a CUDA graph. On a
  CUDA build of torch without a GPU, and with ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (which
  importing Lightning sets), that question re-probes NVML each time (a ``dlopen``, hundreds of
  microseconds): the answer "no accelerator" is not cached. When there is no accelerator at
  construction time there is no graph to capture, so the check is skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], params: Iterable[nn.Parameter]
) -> torch.optim.Optimizer:
    """``factory(params)``, with ``fused=True`` where the optimizer takes it and the config
    chose neither ``fused`` nor ``foreach`` itself (same update, to float rounding)."""
    params = list(params)
    optimizer = None
    if _wants_fused(factory, params):
        try:
            optimizer = factory(params, fused=True)
        except (RuntimeError, ValueError, TypeError):  # this optimizer/device has no fused kernel
            optimizer = None
    if optimizer is None:
        optimizer = factory(params)
    if _no_accelerator() and hasattr(optimizer, "_accelerator_graph_capture_health_check"):
        optimizer._accelerator_graph_capture_health_check = _no_graph_capture  # type: ignore[method-assign]
    return optimizer


def _wants_fused(factory: Callable[..., Any], params: list[nn.Parameter]) -> bool:
    keywords = getattr(factory, "keywords", {}) or {}
    if "fused" in keywords or "foreach" in keywords:
        return False
    target = getattr(factory, "func", factory)
    try:
        accepts = "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return accepts and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def _no_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None:
        return False
    return accelerator.current_accelerator(check_available=True) is None


def _no_graph_capture() -> None:
    """Stands in for ``Optimizer._accelerator_graph_capture_health_check`` when no accelerator
    exists: nothing can be capturing a graph."""
