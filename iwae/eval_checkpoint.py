"""Evaluate a saved checkpoint without training: ``python train.py mode=eval ckpt_path=...``.

The model and data are rebuilt from the resolved run config every checkpoint carries
(``checkpoint["iwae_config"]``, a plain dict, so ``torch.load(weights_only=True)`` reads it);
only the ``eval`` group comes from the command line. The metrics.json written has the same
``test/*`` and ``eval/*`` keys as a training run's, so `iwae.reports.table1` reads both alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from iwae.assembly import build, hydra_choice, load_run, run_summary
from iwae.config_check import check_eval_values, check_top_level
from iwae.device import eval_device, set_torch_threads
from iwae.errors import UserError
from iwae.evaluation import test_metrics
from iwae.memory_check import check_eval_memory
from iwae.outputs import format_results, save_sample_grid, write_json_atomic


def evaluate_checkpoint(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` with ``cfg.eval``; write ``metrics.json`` and ``samples.png``
    into ``output_dir``; return the metrics."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path in (None, "", "null", "last") or not Path(ckpt_path).is_file():
        raise UserError(f"mode=eval needs ckpt_path=<existing .ckpt file>, got {ckpt_path!r}")
    check_top_level(cfg)  # threads, seed: the evaluation uses them too
    check_eval_values(cfg.eval, mode="eval")
    # float sums depend on the thread count: the run's own `threads` reproduces its test/nll
    set_torch_threads(cfg.get("threads"))
    device = eval_device(cfg)
    run = load_run(ckpt_path, device, cfg.eval.get("data_path"))
    images = min(run.datamodule.eval_batch_size, len(run.datamodule.splits.test))
    check_eval_memory(
        run.model, cfg.eval, images, ("gpu" if device.type == "cuda" else "cpu", "auto")
    )
    objective = build(run.config.objective)
    model_choice = hydra_choice(ckpt_path, "model")
    metrics = run_summary(objective, run.datamodule, run.config.get("seed"), model_choice)
    metrics["eval/ckpt_path"] = str(ckpt_path)
    metrics["train/steps"] = run.checkpoint.get("global_step")
    if getattr(run.datamodule, "data_sha256", None):  # which bytes were scored
        metrics["eval/data_path"] = str(run.datamodule.path)
        metrics["eval/data_sha256"] = run.datamodule.data_sha256
    metrics.update(test_metrics(run.model, run.test_batches(device), cfg.eval))
    output_dir.mkdir(parents=True, exist_ok=True)
    save_sample_grid(run.model, run.datamodule.image_shape, output_dir / "samples.png")
    write_json_atomic(output_dir / "metrics.json", metrics)
    print(format_results(metrics))
    return metrics
