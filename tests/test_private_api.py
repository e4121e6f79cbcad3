"""The private torch and Lightning attributes the project relies on, one test each: when an
upgrade removes one, this fails naming the attribute and the one place that uses it, instead
of a run failing (or silently changing) somewhere inside training.

Each stays because no public API does the same:
- ``torch._fused_adam_`` (`iwae.fused.adam.StackedAdam`): the fused Adam kernel on views of one
  stacked buffer with a per-member ``found_inf`` mask; the public ``torch.optim.adam.adam``
  increments a separate step tensor per parameter, which would change the checkpointed state.
- ``_FitLoop._iteration_based_training`` (`iwae.training.resume.EpochExactFitLoop`): the one
  switch that makes a ``max_steps`` resume from an epoch-end checkpoint replay no epoch.
- ``epoch_loop._batches_that_stepped`` (`iwae.training.module.IWAEModule`, with
  ``steps_per_batch``): Lightning's logging step counter, advanced per optimizer step.
- ``Optimizer._accelerator_graph_capture_health_check`` (`iwae.training.optim`): replaced on a
  machine without an accelerator, where torch would probe for one at every step.
- ``WandbLogger._wandb_init`` (`iwae.training.loggers.WandbLogger`): the arguments Lightning
  hands ``wandb.init``, from which the ``anonymous=None`` that makes W&B warn is dropped.
- ``SummaryWriter._get_file_writer`` (`iwae.training.loggers.TensorBoardLogger`): where the
  HParams summaries go into the run's own event file, as Lightning's ``log_hyperparams`` does
  (the public ``add_hparams`` writes a second run in a new subfolder).
"""

from __future__ import annotations

import inspect

import pytorch_lightning as pl
import torch
from pytorch_lightning.loops.fit_loop import _FitLoop

from iwae.training.resume import EpochExactFitLoop


def test_fused_adam_kernel_exists_with_the_arguments_used() -> None:
    assert hasattr(torch, "_fused_adam_"), (
        "torch._fused_adam_ is gone: iwae/fused/adam.py (StackedAdam.step) needs another kernel"
    )
    p, g = torch.ones(3), torch.full((3,), 0.5)
    m, v, step = torch.zeros(3), torch.zeros(3), torch.ones(())
    settings = dict(lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8)
    torch._fused_adam_(
        [p], [g], [m], [v], [], [step], **settings, amsgrad=False, maximize=False,
        grad_scale=None, found_inf=torch.zeros(()),
    )  # fmt: skip
    assert torch.allclose(p, torch.full((3,), 0.9)), "torch._fused_adam_ changed its update"
    skipped = torch.ones(3)
    torch._fused_adam_(
        [skipped], [g], [m], [v], [], [step], **settings, amsgrad=False, maximize=False,
        grad_scale=None, found_inf=torch.ones(()),
    )  # fmt: skip
    assert torch.equal(skipped, torch.ones(3)), "torch._fused_adam_ ignores found_inf now"


def test_fit_loop_has_the_iteration_based_switch() -> None:
    assert "_iteration_based_training" in vars(_FitLoop), (
        "Lightning's _FitLoop._iteration_based_training is gone: "
        "iwae/training/resume.py (EpochExactFitLoop) must find another way to resume exactly"
    )
    assert inspect.signature(_FitLoop._iteration_based_training).parameters.keys() == {"self"}
    assert issubclass(EpochExactFitLoop, _FitLoop)


def test_epoch_loop_counts_batches_that_stepped() -> None:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert isinstance(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None), int), (
        "Lightning's epoch_loop._batches_that_stepped is gone: iwae/training/module.py "
        "(steps_per_batch) must count logging steps another way"
    )


def test_optimizer_graph_capture_check_is_a_method() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(1))])
    assert callable(getattr(optimizer, "_accelerator_graph_capture_health_check", None)), (
        "torch's Optimizer._accelerator_graph_capture_health_check is gone: the patch in "
        "iwae/training/optim.py (build_optimizer) is no longer needed; remove it"
    )


def test_summary_writer_gives_its_file_writer(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    try:
        file_writer = getattr(writer, "_get_file_writer", lambda: None)()
        assert callable(getattr(file_writer, "add_summary", None)), (
            "torch's SummaryWriter._get_file_writer is gone: iwae/training/loggers.py "
            "(TensorBoardLogger.log_hyperparams) must write the HParams summaries another way"
        )
    finally:
        writer.close()


def test_wandb_logger_keeps_its_init_arguments(tmp_path) -> None:
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    assert isinstance(getattr(logger, "_wandb_init", None), dict), (
        "Lightning's WandbLogger._wandb_init is gone: iwae/training/loggers.py (WandbLogger) "
        "must drop the anonymous argument another way"
    )
