"""The structure of a loaded checkpoint, checked in one place before anything reads it.

``torch.load(weights_only=True)`` keeps a file from running code, but not from holding a list
where a mapping belongs or a number where a tensor belongs; a resume, ``init_from`` or a fused
group would then fail deep inside Lightning or torch with an ``AttributeError`` or
``TypeError`` traceback. `check_structure` compares what a checkpoint holds with what
train.py (and a fused group) writes, key by key where the key is present, and names the
first difference in one line. `iwae.training.checkpointing.load_checkpoint`, which every
loader goes through (resume and Lightning's own loader, ``init_from``, ``mode=eval``, the
report tools, the fused launcher), calls it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from iwae.errors import UserError

# A spec is: a type or tuple of types (isinstance), ``{key: spec}`` (a mapping whose listed
# keys, where present, match their spec), ``ListOf(spec)`` or ``MappingOf(spec)``.


class ListOf:
    def __init__(self, spec: Any) -> None:
        self.spec = spec


class MappingOf:
    def __init__(self, spec: Any) -> None:
        self.spec = spec


NUMBER = (int, float)
STATE = MappingOf(torch.Tensor)
# What Lightning (2.x) writes, and this project's own entries: checkpoints/last.ckpt of a run.
LIGHTNING: dict[str, Any] = {
    "state_dict": STATE,
    "epoch": int,
    "global_step": int,
    "loops": MappingOf(Mapping),
    "callbacks": MappingOf(Mapping),
    "optimizer_states": ListOf(
        {
            "state": MappingOf(MappingOf((torch.Tensor, *NUMBER))),
            "param_groups": ListOf({"params": ListOf(int)}),
        }
    ),
    "lr_schedulers": ListOf(Mapping),
    "hyper_parameters": Mapping,
    "iwae_config": Mapping,
}
# Lightning keeps a datamodule's state under its class name; a data file's is ``data_file``.
DATAMODULE: dict[str, Any] = {
    "train": {"epoch": int, "batches_done": int},
    "data_file": {"path": str, "sha256": str},
}
CALLBACKS: dict[str, Any] = {"RNGStateCheckpoint": {"ranks": ListOf(Mapping)}}


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, torch.Tensor):
        return "a tensor"
    if isinstance(value, bool | int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return "null" if value is None else f"a {type(value).__name__}"


def _expected(spec: Any) -> str:
    if isinstance(spec, dict) or spec is Mapping or isinstance(spec, MappingOf):
        return "a mapping"
    if isinstance(spec, ListOf):
        return "a list"
    types = spec if isinstance(spec, tuple) else (spec,)
    names = {torch.Tensor: "a tensor", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _is(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:  # True is an int to isinstance
        return False
    return isinstance(value, types)


def mismatch(value: Any, spec: Any, where: str) -> str | None:
    """``"<where> is a list where a mapping belongs"`` for the first place ``value`` departs
    from ``spec``; None when it matches."""
    if isinstance(spec, dict | MappingOf) or spec is Mapping:
        if not isinstance(value, Mapping):
            return f"{where} is {_kind(value)} where {_expected(spec)} belongs"
        if isinstance(spec, MappingOf):
            items = ((f"{where}[{k!r}]", v, spec.spec) for k, v in value.items())
        elif isinstance(spec, dict):
            items = ((f"{where}.{k}", value[k], s) for k, s in spec.items() if k in value)
        else:
            return None
        return next((m for p, v, s in items if (m := mismatch(v, s, p)) is not None), None)
    if isinstance(spec, ListOf):
        if not isinstance(value, Sequence) or isinstance(value, str):
            return f"{where} is {_kind(value)} where a list belongs"
        parts = (mismatch(v, spec.spec, f"{where}[{i}]") for i, v in enumerate(value))
        return next((m for m in parts if m is not None), None)
    if not _is(value, spec):
        return f"{where} is {_kind(value)} where {_expected(spec)} belongs"
    return None


def check_structure(checkpoint: Any, path: str | os.PathLike) -> None:
    """A one-line `UserError` naming the first entry of ``checkpoint`` (loaded from ``path``)
    that does not have the structure train.py writes; nothing when all do."""
    problem = mismatch(checkpoint, {**LIGHTNING, "callbacks": MappingOf(Mapping)}, "checkpoint")
    if problem is None:
        problem = mismatch(checkpoint.get("callbacks", {}), CALLBACKS, "callbacks")
    if problem is None:
        modules = {k: DATAMODULE for k in checkpoint if str(k).endswith("DataModule")}
        problem = mismatch(checkpoint, modules, "checkpoint")
    if problem is not None:
        raise UserError(
            f"{path} is damaged or was not written by train.py: "
            f"{problem.removeprefix('checkpoint.')}; use an intact checkpoint"
        )
