"""How wide a model's tensors are per sample, for the memory checks.

The checks (`iwae.launch.memory_check`, `iwae.evaluation.chunk_plan`, `iwae.ais.row_bytes`)
size a step by the widths of the ``[samples, images, width]`` tensors a model makes. The
widths of its ``nn.Linear`` layers say that for an MLP, but not for a network of one's own
whose widest tensors are convolutional feature maps (channels x height x width).
`measured_widths` therefore runs the model once, on one blank image with two draws, and
records the output of every module that has parameters of its own (linear, convolutional,
normalisation layers): the values per draw of each. The checks take the larger of this and
the linear-layer rule, so the project's MLPs are sized as before.

The pass draws its noise from a generator of its own (``log_weights``' ``generator``), leaves
torch's global random state as it was, and runs in eval mode (restored after), so that neither a
run's random stream nor the model (batch-norm statistics) is changed by it. A model on the
``meta`` device (how `train.py` checks a model before building it) gives the shapes without
computing anything.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

DRAWS = 2  # samples of the one image: a module applied once per image shows half its width
_measured: weakref.WeakKeyDictionary[nn.Module, tuple[int, ...]] = weakref.WeakKeyDictionary()


def measured_widths(model: nn.Module) -> tuple[int, ...]:
    """Values per draw of each output of ``model``'s modules that hold parameters, in one
    ``log_weights`` pass; () when the model cannot be run so (no ``input_dim``, no
    ``log_weights``, or the pass fails): the checks then use the linear layers alone."""
    if model in _measured:
        return _measured[model]
    widths: list[int] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        widths.extend(t.numel() // DRAWS for t in outputs if isinstance(t, Tensor))

    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(record) for m in owners]
    try:
        if not _ran_once(model):
            widths = []
    finally:
        for handle in handles:
            handle.remove()
    _measured[model] = tuple(widths)
    return _measured[model]


def _ran_once(model: nn.Module) -> bool:
    """One no-grad ``log_weights`` pass on a blank image; whether it ran."""
    input_dim = getattr(model, "input_dim", None)
    parameter = next(model.parameters(), None)
    if not isinstance(input_dim, int) or parameter is None or not hasattr(model, "log_weights"):
        return False
    device = parameter.device
    x = torch.zeros(1, input_dim, device=device, dtype=parameter.dtype)
    generator = None if device.type == "meta" else torch.Generator(device).manual_seed(0)
    forked = [device] if device.type == "cuda" else []
    training = model.training
    model.eval()  # nothing may change: batch-norm statistics, for one, move in training mode
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=forked):
            model.log_weights(x, DRAWS, generator=generator)
    except Exception:  # noqa: BLE001 (any failure: fall back to the linear layers)
        return False
    finally:
        model.train(training)
    return True
