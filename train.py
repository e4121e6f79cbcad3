"""Train and evaluate a VAE or IWAE: ``python train.py objective=iwae k=50 model=two_layer``.

All behaviour lives in the ``iwae`` package; this script only composes the config and wires.
Nothing imported at the top loads torch or Lightning (seconds): the pre-check, ``--help``,
``--cfg`` and shell completion answer without them; `main` imports them when a job runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from iwae.errors import UserError, exit_for
from iwae.launch.cli import (
    exit_on_bad_overrides,
    is_eval_command,
    no_validation_error,
    quiet_third_party_noise,
    remove_refused_run_dir,
    run_dir_is_new,
    search_space_as_arguments,
)
from iwae.launch.resolvers import register_resolvers
from iwae.launch.run_lock import exit_on_unusable_output_dir, run_lock

register_resolvers()  # before Hydra composes the config, which uses ${iwae.*}
# Set by the command line below: this process's run directory did not exist before it, so a run
# refused before it wrote anything may remove it. False in a sweep's jobs and in joblib workers.
NEW_RUN_DIR = False


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # A joblib or submitit worker receives this function pickled by value: it runs no
    # module-level code of this file, so the resolvers are registered here as well.
    register_resolvers()
    quiet_third_party_noise()  # and its warning filters: a joblib worker starts without them
    from iwae.launch.plugins import trust_run  # (no torch: an untrusted module is said first)

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if cfg.get("mode", "train") not in ("train", "eval"):  # a sweep's later values
            raise UserError(f"unknown mode {cfg.mode!r}; choose one of: train, eval")
        with run_lock(output_dir):  # one process per run directory (each job of a sweep too)
            try:
                # plugins=, $IWAE_PLUGINS, entry points: imported first; in a joblib or SLURM
                # worker too (the job's config holds `plugins`, the environment travels)
                trust_run(cfg)
                from iwae.launch.eval_checkpoint import evaluate_checkpoint
                from iwae.launch.run import train

                run = evaluate_checkpoint if cfg.get("mode") == "eval" else train
                metrics = run(cfg, output_dir)
            except UserError:
                if NEW_RUN_DIR:  # refused before any result: leave no run directory behind
                    remove_refused_run_dir(output_dir, HydraConfig.get().job.name)
                raise
    except UserError as e:
        exit_for(e)
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves and exits 130 itself)
        print(
            f"interrupted (SIGINT) outside training; continue with the same command plus "
            f"resume=true hydra.run.dir={output_dir}",
            file=sys.stderr,
        )
        sys.exit(130)
    except OSError as e:
        from iwae.training.checkpointing import is_disk_full

        if not is_disk_full(e):
            raise
        where = e.filename or output_dir
        exit_for(
            UserError(
                f"no space left on the device writing {where}; free some space there and resume"
            )
        )
    # What a Hydra sweeper (Optuna) minimises: the validation negative bound -val/bound in
    # nats, never a test quantity, so a search cannot tune on the test set. None (a failed
    # trial) where no validation ran; an Optuna study is stopped then (see no_validation_error).
    if metrics.get("val/bound") is None:
        problem = no_validation_error(HydraConfig.get(), metrics)
        if problem is not None:
            exit_for(problem)
        return None
    return -metrics["val/bound"]


if __name__ == "__main__":
    # Hydra refuses a sweep inside its own config: the search space goes where Optuna reads it.
    sys.argv[1:] = search_space_as_arguments(sys.argv[1:])
    exit_on_bad_overrides()
    if is_eval_command(sys.argv[1:]):  # (imports torch: only for mode=eval)
        from iwae.launch.eval_checkpoint import own_output_dir

        sys.argv[1:] = own_output_dir(sys.argv[1:])  # mode=eval never writes into a training run
    NEW_RUN_DIR = run_dir_is_new(sys.argv[1:])  # before the lock below creates the directory
    exit_on_unusable_output_dir()  # before Hydra, whose logging setup fails with a traceback
    main()
