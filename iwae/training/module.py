"""The LightningModule: a model, an objective that trains it, Adam and an epoch-wise schedule."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from iwae.evaluation import log_likelihood
from iwae.model import IWAEModel
from iwae.objectives import Staged, TrainingObjective
from iwae.training.optim import build_optimizer


def compile_options(device: torch.device) -> dict[str, Any]:
    """Inductor options of the compiled step on ``device``.

    ``fallback_random``: the noise comes from ATen's own ``randn`` on the global generator,
    not Inductor's generator, so a compiled step draws the very numbers an eager step draws,
    the generator state in a checkpoint continues them on resume, and RWS's replay of the
    noise (``fork_rng``) holds. ``triton.cudagraphs`` (what ``mode="reduce-overhead"`` sets):
    on a GPU, one graph launch instead of a kernel launch per op, which is what a batch-20
    step is bound by. Passed as options because ``torch.compile`` takes a mode or options.
    """
    options: dict[str, Any] = {"fallback_random": True}
    if device.type == "cuda":
        options["triton.cudagraphs"] = True
    return options


def loss_and_bound(
    objective: TrainingObjective, model: torch.nn.Module, x: Tensor
) -> tuple[Tensor, Tensor]:
    """The compiled region: forward and (through AOTAutograd) backward of the model and the
    objective. A plain tuple: what the training step uses of ``ObjectiveOutput``."""
    out = objective(model, x)
    return out.loss, out.bound


# One compiled function per set of options, shared by every module of the process. The model
# and the objective are arguments, not closed over: Dynamo guards on their types, settings and
# tensor shapes, not on their identity, so the next run of a sweep in the same process (or a
# resumed fit) reuses the graphs instead of compiling again, and never reaches Dynamo's limit
# of 8 graphs per function.
_COMPILED: dict[tuple[tuple[str, Any], ...], Callable[..., tuple[Tensor, Tensor]]] = {}


def compiled_loss_and_bound(device: torch.device) -> Callable[..., tuple[Tensor, Tensor]]:
    """`loss_and_bound` compiled for ``device`` (`compile_options`), static shapes."""
    options = compile_options(device)
    key = tuple(sorted(options.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(loss_and_bound, dynamic=False, options=options)
    return _COMPILED[key]


class IWAEModule(pl.LightningModule):
    """Trains ``model`` with ``objective``; validates with the k=``val_k`` IWAE bound.

    Args:
        model: the generative model and inference network.
        objective: the bound (and gradient estimator) to train with.
        optimizer: a partial optimizer (Hydra ``_partial_: true``) completed with the parameters.
        schedule: an object with ``lr_factor(epoch)``, applied once per epoch.
        val_k: importance samples for the validation bound ``val/bound`` (nats, higher is better).
        val_seed: seeds the validation noise, apart from the training stream.
        log_every_n_steps: training metrics are logged every this many steps only: logging
            every one of the paper's ten million steps costs more than the step itself.
        config: the run's resolved config, stored in every checkpoint so it can be rebuilt.
        hparams: what the loggers record as the run's config (`iwae.training.loggers.run_config`).
        steps_per_batch: optimizer steps per Lightning batch (the DataModule then yields lists
            of that many minibatches). Lightning's work around a batch (hooks, progress,
            logging) costs about as much as a whole step at k <= 5 on a CPU
            (docs/performance.md); with S steps per batch it is paid once per S steps. The
            steps, their data and their random numbers are the same as with one step per batch.

    ``config["compile"]`` true compiles each step's forward and backward with ``torch.compile``
    (`compile_options`; docs/performance.md says when it pays): each objective (each stage of a
    staged one) once, at its first step, for the training batch size; an epoch's smaller last
    batch takes the eager step (`_step`), so nothing is compiled again.
    """

    def __init__(
        self,
        model: IWAEModel,
        objective: TrainingObjective,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: Any,
        val_k: int = 100,
        val_seed: int = 0,
        log_every_n_steps: int = 50,
        config: dict | None = None,
        hparams: dict | None = None,
        steps_per_batch: int = 1,
    ) -> None:
        super().__init__()
        # several steps per batch are taken by hand (Lightning's manual optimization)
        self.automatic_optimization = steps_per_batch == 1
        if hparams:  # Lightning hands them to every logger when fit starts (W&B's run config)
            self.save_hyperparameters(hparams)
        self.model, self.objective = model, objective
        self.optimizer_factory, self.schedule = optimizer, schedule
        self.val_k, self.val_seed = val_k, val_seed
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.config = config
        self.compile_step = bool((config or {}).get("compile", False))
        self._compiled_shape: torch.Size | None = None

    def _step(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, bound)`` of one minibatch: the objective's, compiled if ``compile``.

        Compiled for the shape of the first minibatch; a minibatch of another shape (an
        epoch's smaller last batch) takes the eager step. Why not a dynamic batch size: the
        model draws its noise with ``torch.randn(..., generator=...)``, whose overload takes
        no symbolic sizes, so a dynamic batch dimension fails to trace; a second static graph
        would cost a second cold compile (tens of seconds) for one step an epoch. The choice
        depends on the shape alone, so a resumed run takes the same path at every step.
        """
        objective = self.objective.current if isinstance(self.objective, Staged) else self.objective
        if self.compile_step:
            if self._compiled_shape is None:
                self._compiled_shape = x.shape
            if x.shape == self._compiled_shape:
                if x.device.type == "cuda":  # CUDA graphs: a new iteration, outputs may be reused
                    torch.compiler.cudagraph_mark_step_begin()
                return compiled_loss_and_bound(x.device)(objective, self.model, x)
        out = objective(self.model, x)
        return out.loss, out.bound

    def training_step(self, x: Tensor | list[Tensor], batch_idx: int) -> Tensor | None:
        if not self.automatic_optimization:
            return self._several_steps(x)
        loss, bound = self._step(x)
        if self.global_step % self.log_every_n_steps == 0:
            # Not on the progress bar: Lightning re-reads a bar value from the device at every
            # later step (.item()), a host sync per step on a GPU.
            self.log("train/bound", bound.mean(), batch_size=x.shape[0])
        return loss

    def _several_steps(self, minibatches: list[Tensor]) -> None:
        """One optimizer step per minibatch, exactly as Lightning's automatic optimization
        takes it (zero_grad, backward, step, with the same hooks: the non-finite guard masks
        the update on the device), and the learning rate of the epoch."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        while scheduler.last_epoch < self.current_epoch:  # Lightning steps it only by itself
            scheduler.step()
        # trainer.max_steps is refused (it would cut a batch): every minibatch is a step
        for x in minibatches:
            step = self.global_step
            loss, bound = self._step(x)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            if step % self.log_every_n_steps == 0:
                self._log_train_bound(bound.mean(), step)
        # Lightning counts logging steps per batch ("_batches_that_stepped", checkpointed with
        # the loop); count optimizer steps, as with one step per batch, so that val/bound and
        # train/bound share one step axis.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += len(minibatches) - 1

    def setup(self, stage: str) -> None:
        if not self.automatic_optimization:  # train/bound is logged every n optimizer steps
            warnings.filterwarnings("ignore", message=r"The number of training batches .* is sma")

    def _log_train_bound(self, bound: Tensor, step: int) -> None:
        """``train/bound`` to the loggers at optimizer step ``step`` (Lightning's ``self.log``
        flushes once per batch); the one host read, on logging steps only."""
        if not self.trainer.is_global_zero or not self.loggers:
            return
        metrics = {"train/bound": float(bound), "epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_epoch_start(self) -> None:
        # A staged objective (vae_to_iwae, Table 2) picks its stage from the epoch.
        self.objective.on_train_epoch_start(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        # Validation draws its own seeded noise: every validation of a model gives the same
        # val/bound, and the training stream (global RNG) is left exactly where it was, so a
        # run resumed from a checkpoint taken before a validation continues bit for bit.
        self._val_generator = torch.Generator(device=self.device).manual_seed(self.val_seed)

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        bound = log_likelihood(
            self.model, x, self.val_k, chunk_size=self.val_k, generator=self._val_generator
        ).float()
        self.log("val/bound", bound.mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self):
        # fused Adam, no per-step accelerator probe on CPU-only machines: see iwae/training/optim.py
        optimizer = build_optimizer(self.optimizer_factory, self.model.parameters())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.lr_factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.config is not None:
            checkpoint["iwae_config"] = self.config
