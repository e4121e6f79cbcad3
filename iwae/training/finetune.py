"""Fine-tuning, Burda et al. 2015, sec. 5.2: a trained VAE continued as an IWAE (and the
reverse), and the Table 2 "before" row measured at the switch.

Two ways to fine-tune: a staged objective (``objective=vae_to_iwae``) in one run, measured by
`SwitchEvaluation`; or ``init_from=<ckpt>`` (`iwae.launch.assembly.load_init_weights`), a new
run from the old weights with a fresh optimizer and schedule. Unlike ``ckpt_path`` (resume: weights,
optimizer moments, epoch and schedule position), ``init_from`` keeps nothing but the weights; a
run that resumes restores its own weights and ignores ``init_from``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import Callback
from torch import nn

from iwae.evaluation import test_metrics
from iwae.objectives import Staged
from iwae.training.outputs import write_json_atomic


class SwitchEvaluation(Callback):
    """At a staged objective's switch, evaluate the model as the paper's Table 2 "before" row.

    Burda et al. 2015, sec. 5.2 report test NLL and active units of the trained VAE (or IWAE)
    and of the same model after fine-tuning with the other objective. In a one-run staged
    objective the "before" model exists only at the switch: this callback measures it there
    (the same measures and settings as the final evaluation, `iwae.evaluation.test_metrics`), writes
    ``switch_metrics.json`` to ``output_dir`` and logs ``switch/test_nll``.
    """

    def __init__(
        self,
        output_dir: str,
        k: int = 5000,
        chunk_size: int = 500,
        seed: int = 0,
        active_threshold: float = 0.01,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.k, self.chunk_size, self.seed = k, chunk_size, seed
        self.active_threshold = active_threshold

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        objective = pl_module.objective
        if not isinstance(objective, Staged) or trainer.current_epoch != objective.switch_epoch:
            return
        if not trainer.is_global_zero:
            return
        metrics = self.measure(pl_module.model, list(trainer.datamodule.test_dataloader()))
        metrics.update(objective=objective.stages[0].name, k=objective.stages[0].k)
        metrics["epoch"] = trainer.current_epoch
        write_json_atomic(self.output_dir / "switch_metrics.json", metrics)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"switch/test_nll": metrics["test/nll"]}, trainer.global_step
            )

    def measure(self, model: nn.Module, test: list) -> dict[str, Any]:
        """Test NLL (``k`` samples) and active units per layer: the final evaluation's
        measures (`test_metrics`), with this callback's settings."""
        eval_cfg = OmegaConf.create(
            {
                "k": self.k,
                "chunk_size": self.chunk_size,
                "seed": self.seed,
                "active_threshold": self.active_threshold,
                "progress": False,
            }
        )
        was_training = model.training
        metrics = test_metrics(model, test, eval_cfg)
        model.train(was_training)
        return metrics
