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
from iwae.launch.cli import no_validation_error, quiet_third_party_noise
from iwae.launch.job import prepare_command, run_job
from iwae.launch.resolvers import register_resolvers

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
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_job(cfg, NEW_RUN_DIR)  # trust the plug-ins, then train or evaluate
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
    try:  # every override checked, the output directory claimed: all before Hydra and torch
        sys.argv[1:], NEW_RUN_DIR = prepare_command(sys.argv[1:])
    except UserError as e:
        exit_for(e)
    main()
