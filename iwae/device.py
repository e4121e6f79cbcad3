"""The device a run asks for, checked before anything is built."""

from __future__ import annotations

from typing import Any

from iwae.errors import UserError

GPU_NAMES = ("gpu", "cuda")


def check_accelerator(accelerator: Any) -> None:
    """One line, before training, when ``trainer.accelerator`` asks for a GPU torch cannot
    see (Lightning would fail inside the Trainer with a multi-line MisconfigurationException)."""
    import torch

    name = str(accelerator)
    if name in GPU_NAMES and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={name} asks for a GPU, but torch finds none here; "
            "use trainer.accelerator=cpu (or auto: a GPU when there is one)"
        )
