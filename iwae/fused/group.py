"""One fused group: M configurations trained in one step each, each writing its own run.

Why a hand-written loop and not a Lightning ``Trainer``: at the paper's batch of 20 a step is
a few tiny matmuls, and on a GPU its time is per-step Python and framework overhead (kernel
launches, hooks, logging), which Lightning's loop and callbacks add to (docs/performance.md:
about 1.4 ms of a 3.5 ms CPU step). The loop below does per step only what
the step needs: M minibatches, the noise, one forward and backward, one masked Adam step. It
reads nothing back from the device between logging intervals: the non-finite check is a mask
on the device, read at the end of each epoch and at checkpoints.

What a member shares with a separate run of its config: the initial weights (the global
generator seeded with its ``seed`` before the model is built, as ``train`` does), its data
order and dynamic binarization (its own `MinibatchIterable`, seeded with ``data.seed``), its
noise (a generator continuing the global stream after initialisation, as a separate run's
``torch.randn`` does), its validation and test evaluation. On the CPU only rounding differs
(batched matmuls, the stacked Adam); tests/test_fused.py checks this.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from iwae.errors import UserError
from iwae.evaluation import log_likelihood
from iwae.fused.adam import StackedAdam, adam_settings
from iwae.fused.members import Member, training_device
from iwae.fused.objectives import FusedObjective
from iwae.fused.stacked import StackedIWAE
from iwae.launch.assembly import build
from iwae.launch.cpu_pages import populate_kernel_constants
from iwae.launch.device import set_flush_denormal, set_torch_threads
from iwae.training.checkpointing import load_checkpoint, write_bytes_atomic

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class NonFiniteSettings:
    """A member's ``callbacks.nonfinite`` (action stop/skip, max_skips), as the guard reads it."""

    def __init__(self, cfg: DictConfig) -> None:
        node = (cfg.get("callbacks") or {}).get("nonfinite") or {}
        self.action = node.get("action", "stop")
        if self.action not in ("stop", "skip"):
            raise UserError(
                f"callbacks.nonfinite.action must be one of stop, skip; got {self.action!r}"
            )
        limit = node.get("max_skips", 100)
        self.max_skips = float("inf") if limit is None else int(limit)


class FusedGroup:
    """Builds the members, trains them together, writes each member's run directory.

    A group checks no values: the launcher checks every member's values, memory and data
    before it builds the first group (`iwae.fused.preflight.check_members`), so that no group
    trains in a sweep that a later member's bad value would stop.

    Args:
        members: configurations that `group_members` put together.
        checkpoint_path: the group checkpoint (stacked weights, Adam, generators, data
            positions), written atomically at every epoch end and every
            ``checkpoint_every_n_steps`` steps.
        checkpoint_every_n_steps: also checkpoint within epochs (None: at epoch ends only).
    """

    def __init__(
        self,
        members: list[Member],
        checkpoint_path: Path,
        checkpoint_every_n_steps: int | None = None,
    ) -> None:
        self.members, self.checkpoint_path = members, checkpoint_path
        self.every = checkpoint_every_n_steps
        first = members[0].cfg
        self.device = training_device(first.trainer.get("accelerator", "auto"))
        set_torch_threads(first.get("threads"))
        set_flush_denormal(first.get("flush_denormal", True))  # a top-level key: shared
        populate_kernel_constants()
        self.datamodules = self._build_data()
        models, self.objectives, self.generators = self._build_models()
        self.stacked = StackedIWAE(models).to(self.device)
        self.objective = FusedObjective(self.objectives, self.device)
        self.adam = StackedAdam(self.stacked, **adam_settings(_plain(first.optimizer)))
        self.schedule = build(first.schedule)
        self.epochs = int(first.trainer.get("max_epochs") or self.schedule.epochs)
        self.log_every = max(1, int(first.trainer.get("log_every_n_steps", 50)))
        self.loaders = [dm.train_dataloader() for dm in self.datamodules]
        self.nonfinite = [NonFiniteSettings(m.cfg) for m in members]
        n = len(members)
        self.stop_on_nonfinite = torch.tensor(
            [s.action == "stop" for s in self.nonfinite], device=self.device
        )
        self.max_skips = torch.tensor([s.max_skips for s in self.nonfinite], device=self.device)
        self.alive = torch.ones(n, dtype=torch.bool, device=self.device)
        self.skipped = torch.zeros(n, dtype=torch.long, device=self.device)
        self.first_bad = torch.full((n,), -1, dtype=torch.long, device=self.device)
        self.step_t = torch.zeros((), dtype=torch.long, device=self.device)
        self.global_step = self.epoch = 0
        self.history: list[list[dict[str, float]]] = [[] for _ in members]
        self.pending: list[tuple[int, int, Tensor]] = []  # (step, epoch, bounds [M]) on device
        self.reported: set[int] = set()
        self.seconds = 0.0

    # --- building -------------------------------------------------------------------------
    def _build_data(self) -> list[Any]:
        """One datamodule per member (own seed: order, binarization); the tensors are shared
        when the training data is not binarized per seed (a group's members have one data
        config but for its seed)."""
        datamodules, shared = [], None
        for member in self.members:
            dm = build(member.cfg.data)
            if shared is not None and dm.binarization == "dynamic":
                dm.splits, dm.data_sha256 = shared.splits, getattr(shared, "data_sha256", None)
                dm.train_x, dm.val_x, dm.test_x = shared.train_x, shared.val_x, shared.test_x
            else:
                dm.prepare()
                dm.setup("fit")
                dm.train_x, dm.val_x, dm.test_x = (
                    t.to(self.device) for t in (dm.train_x, dm.val_x, dm.test_x)
                )
                shared = dm if dm.binarization == "dynamic" else shared
            datamodules.append(dm)
        return datamodules

    def _build_models(self) -> tuple[list[Any], list[Any], list[torch.Generator]]:
        models, objectives, generators = [], [], []
        for member, dm in zip(self.members, self.datamodules):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(member.cfg.seed)  # what pl.seed_everything does for torch
                model = build(member.cfg.model, input_dim=dm.input_dim)
                model.init_output_bias(dm.train_pixel_mean())
                cpu_state = torch.get_rng_state()
            generator = torch.Generator(device=self.device)
            if self.device.type == "cpu":
                generator.set_state(cpu_state)  # the stream a separate run's randn continues
            else:  # a separate CUDA run draws from the CUDA generator, untouched by the init
                generator.manual_seed(member.cfg.seed)
            models.append(model)
            objectives.append(build(member.cfg.objective))
            generators.append(generator)
        return models, objectives, generators

    # --- training -------------------------------------------------------------------------
    def _noise(self, batch: int) -> list[Tensor]:
        """Per layer ``[M, K, B, d]``: member m's k_m draws from its own generator, in the
        order `IWAEModel.log_weights` draws them, padded with zeros to the group's K."""
        k_max = self.objective.k_max
        per_layer: list[list[Tensor]] = [[] for _ in self.stacked.latent_dims]
        for k, g in zip(self.objective.ks, self.generators):
            for layer, d in enumerate(self.stacked.latent_dims):
                eps = torch.randn((k, batch, d), generator=g, device=self.device)
                if k < k_max:
                    eps = torch.cat([eps, eps.new_zeros(k_max - k, batch, d)])
                per_layer[layer].append(eps)
        return [torch.stack(draws) for draws in per_layer]

    def train_step(self, x: Tensor, lr_factor: float) -> Tensor:
        """One step of every member on its minibatch ``x[m]``; returns the bounds ``[M]``."""
        out = self.objective(self.stacked.log_weights(x, self._noise(x.shape[1])))
        out.loss.sum().backward()  # members' parameters are disjoint: each gets its own gradient
        grads = self.stacked.grads()
        with torch.no_grad():
            # The sum is NaN/inf if an entry is: one read of each gradient, where isfinite().all()
            # takes three and aminmax is 10x slower on the CPU. A finite gradient whose sum
            # overflows has entries above 1e32, whose squares make Adam's moment inf anyway.
            sums = torch.stack([g.flatten(1).sum(1) for g in grads])
            ok = torch.isfinite(out.loss) & torch.isfinite(sums.sum(0))
            bad = self.alive & ~ok
            # in place throughout: a captured CUDA graph replays into the same tensors
            self.first_bad.copy_(
                torch.where(bad & (self.first_bad < 0), self.step_t, self.first_bad)
            )
            self.skipped += bad
            stop = bad & (self.stop_on_nonfinite | (self.skipped > self.max_skips))
            self.alive &= ~stop
            self.adam.step(grads, ok & self.alive, lr_factor)
            self.step_t += 1
        return out.bound.detach().mean(1)

    def fit(self) -> None:
        """Train from the group checkpoint if resuming, else from scratch, to the last epoch."""
        start = time.perf_counter()
        while self.epoch < self.epochs:
            lr_factor = self.schedule.lr_factor(self.epoch)
            for batches in zip(*self.loaders):
                bounds = self.train_step(torch.stack(batches), lr_factor)
                self.global_step += 1
                if self.global_step % self.log_every == 0:
                    self.pending.append((self.global_step, self.epoch, bounds))
                done = self.loaders[0].batches_done
                if (
                    self.every
                    and self.global_step % self.every == 0
                    and done < len(self.loaders[0])
                ):
                    self.save_checkpoint(time.perf_counter() - start)
            self.validate()
            self.epoch += 1
            self.save_checkpoint(time.perf_counter() - start)
        self.seconds += time.perf_counter() - start

    def flush(self) -> None:
        """Move the logged training bounds to the host and report members that stopped: the
        only reads from the device, once an epoch (and at checkpoints)."""
        for step, epoch, bounds in self.pending:
            for m, value in enumerate(bounds.tolist()):
                self.history[m].append({"step": step - 1, "epoch": epoch, "train/bound": value})
        self.pending = []
        alive, first_bad, skipped = (t.tolist() for t in (self.alive, self.first_bad, self.skipped))
        for m, member in enumerate(self.members):
            if not alive[m] and m not in self.reported:
                self.reported.add(m)
                setting = self.nonfinite[m]
                why = "" if setting.action == "stop" else f" after skipping {skipped[m] - 1} steps"
                print(
                    f"error: non-finite loss or gradient in {member.label} at step {first_bad[m]}"
                    f"{why}; that run stopped before the update (no metrics.json), the other "
                    f"runs of its group go on. Lower optimizer.lr, or set "
                    f"callbacks.nonfinite.action=skip",
                    flush=True,
                )

    @torch.no_grad()
    def validate(self) -> None:
        """val/bound of every member that is still training, as `IWAEModule` computes it."""
        self.flush()
        alive = self.alive.tolist()
        model = None
        for m, (member, dm) in enumerate(zip(self.members, self.datamodules)):
            if not alive[m]:
                continue
            model = self.stacked.member_model(m, model)
            g = torch.Generator(device=self.device).manual_seed(member.cfg.eval.seed)
            k = member.cfg.eval.val_k
            bounds = [
                log_likelihood(model, x, k, chunk_size=k, generator=g).float()
                for x in dm.val_dataloader()
            ]
            value = float(torch.cat(bounds).mean())
            self.history[m].append(
                {"step": self.global_step - 1, "epoch": self.epoch, "val/bound": value}
            )

    # --- the group checkpoint -------------------------------------------------------------
    def state(self, seconds: float) -> dict[str, Any]:
        self.flush()
        cpu = torch.device("cpu")
        return {
            "state_dict": {"flat": self.stacked.flat.detach().to(cpu)},
            "adam": {k: v.to(cpu) for k, v in self.adam.state_dict().items()},
            "version": CHECKPOINT_VERSION,
            "jobs": [m.job for m in self.members],
            "global_step": self.global_step,
            "epoch": self.epoch,
            "seconds": self.seconds + seconds,
            "loaders": [loader.state_dict() for loader in self.loaders],
            "generators": [g.get_state() for g in self.generators],
            "history": self.history,
            "masks": {
                name: getattr(self, name).to(cpu)
                for name in ("alive", "skipped", "first_bad", "step_t")
            },
            "reported": sorted(self.reported),
            # what a resume compares (`iwae.fused.preflight.check_resume`): each member's
            # config, and the file and SHA-256 of its data (data=npz/folder; else None)
            "configs": [OmegaConf.to_container(m.cfg, resolve=True) for m in self.members],
            "data_files": [data_file(dm) for dm in self.datamodules],
        }

    def save_checkpoint(self, seconds: float) -> None:
        state = self.state(seconds)
        write_bytes_atomic(self.checkpoint_path, lambda f: torch.save(state, f))

    def resume(self) -> bool:
        """Continue from the group checkpoint if there is one; False if there is none."""
        if not self.checkpoint_path.is_file():
            return False
        state = load_checkpoint(self.checkpoint_path)
        check_group_jobs(state, self.checkpoint_path, [m.job for m in self.members])
        self.stacked.load_flat(state["state_dict"]["flat"].to(self.device))
        self.adam.load_state_dict({k: v.to(self.device) for k, v in state["adam"].items()})
        self.global_step, self.epoch = int(state["global_step"]), int(state["epoch"])
        self.seconds = float(state["seconds"])
        for loader, loader_state in zip(self.loaders, state["loaders"]):
            loader.load_state_dict(loader_state)
        for g, rng in zip(self.generators, state["generators"]):
            g.set_state(rng)
        self.history = [list(rows) for rows in state["history"]]
        for name, value in state["masks"].items():
            setattr(self, name, value.to(self.device))
        self.reported = set(state["reported"])
        return True


def check_group_jobs(state: dict[str, Any], path: Path, jobs: list[int]) -> None:
    """A one-line `UserError` unless the group checkpoint ``state`` is of the group ``jobs``."""
    if state.get("version") != CHECKPOINT_VERSION or state.get("jobs") != jobs:
        raise UserError(
            f"{path} belongs to another group (jobs {state.get('jobs')}, not {jobs}); resume "
            "with the same sweep overrides and hydra.sweep.dir"
        )


def data_file(datamodule: Any) -> dict[str, str] | None:
    """``{"path", "sha256"}`` of a user data file, as a separate run's checkpoint stores it."""
    sha256 = getattr(datamodule, "data_sha256", None)
    return None if sha256 is None else {"path": str(datamodule.path), "sha256": sha256}


def _plain(node: Any) -> dict[str, Any]:
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    assert isinstance(container, dict)
    return container
