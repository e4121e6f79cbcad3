"""The Python API: a trained run in a notebook, and a training run started from Python.

    import iwae
    run = iwae.load("outputs/2026-12-07/10-00-00")      # a run directory or a .ckpt file
    run.model, run.config, run.metrics                   # eval-mode model, config, metrics.json
    x = run.test_images()                                # [N, D] the run's binarized test images
    ll = run.log_likelihood(x, k=5000, seed=0)           # [N] float64 nats, as mode=eval
    samples = run.sample(64); mean, log_std = run.encode(x)
    metrics = iwae.train(["objective=iwae", "k=5", "schedule.epochs=1"])

`load` is ``mode=eval``'s loader (`iwae.launch.assembly.load_run`): the same allow-list, the
same plug-in trust (``plugins=``, ``$IWAE_PLUGINS``, entry points; never a checkpoint's own),
the same checks, each failure one line (`iwae.errors.UserError`). `train` runs what
``python train.py <overrides>`` runs (`iwae.launch.job`), through Hydra's own run of the
composed config: the same checks, the same run directory and files, the same metrics.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from iwae import contract
from iwae.errors import UserError
from iwae.evaluation import per_image_log_likelihood

__all__ = ["Run", "load", "train"]


@dataclass
class Run:
    """A trained run, rebuilt from its checkpoint by `load`.

    Attributes:
        model: the trained model, in eval mode.
        config: the run's config as a rebuild reads it (model, objective, data, schedule,
            optimizer, ``k``, ``seed``, ``threads``, ``flush_denormal``, ``eval``).
        metrics: the run's ``metrics.json`` when the checkpoint is its ``last.ckpt`` (the
            model those metrics describe), else None.
        checkpoint: the checkpoint file.
        datamodule: the run's data, its test split binarized once as training saw it.
    """

    model: nn.Module
    config: DictConfig
    metrics: dict[str, Any] | None
    checkpoint: Path
    datamodule: Any

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def test_images(self) -> Tensor:
        """``[N, D]`` the run's own test images, binarized once with the run's seed, exactly
        as its final evaluation scored them; on the model's device."""
        return torch.cat([x.to(self.device) for x in self.datamodule.test_dataloader()])

    @torch.no_grad()
    def log_likelihood(
        self,
        x: Tensor,
        k: int | None = None,
        seed: int | None = None,
        *,
        chunk_size: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """``[N]`` float64: the k-sample estimate of log p(x) in nats for binary images ``x``
        ``[N, D]`` (a lower bound in expectation; the paper's test measure at k = 5000).

        The same estimate ``mode=eval`` makes: ``k``, ``seed`` and ``chunk_size`` default to
        the run's ``eval.k``, ``eval.seed`` and ``eval.chunk_size``, the images go in batches
        of the run's evaluation batch size with one generator, and torch runs with the run's
        ``threads`` and ``flush_denormal`` (float sums depend on them). So on
        `test_images` with the defaults it reproduces ``metrics.json``'s ``test/nll`` to the
        last digit. torch's thread count is restored afterwards.
        """
        x = self._images(x)
        ev = self.config.eval
        k = ev.k if k is None else k
        seed = ev.seed if seed is None else seed
        chunk_size = ev.chunk_size if chunk_size is None else chunk_size
        batches = list(x.split(self.datamodule.eval_batch_size))
        with _run_settings(self.config):
            return per_image_log_likelihood(
                self.model, batches, k, chunk_size, seed, ev.get("max_bytes"), progress
            )

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``[n, D]`` Bernoulli means of x for ``n`` draws from the model (``seed``: a
        generator of its own; None: torch's global one)."""
        lack = contract.optional_missing(self.model)
        if lack is not None:
            raise UserError(lack.replace("is skipped", "cannot be drawn"))
        generator = None if seed is None else torch.Generator(self.device).manual_seed(seed)
        return self.model.sample(n, generator=generator)

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_std) of q(h_1 | x), the first stochastic layer, each ``[N, d_1]``: the
        model's ``encode(x)`` if it has one, else its ``encoder[0](x)`` (this project's
        models, whose ``encoder`` is a ModuleList of the stochastic layers)."""
        x = self._images(x)
        encode = getattr(self.model, "encode", None)
        layers = getattr(self.model, "encoder", None)
        if encode is None and isinstance(layers, nn.ModuleList) and len(layers):
            encode = layers[0]  # this project's models: one module per stochastic layer
        out = encode(x) if encode is not None else None
        if not (isinstance(out, tuple) and len(out) == 2):
            name = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
            raise UserError(
                f"model {name} has no encode(x) returning (mean, log_std) of q(h | x), which "
                f"run.encode needs; see {contract.GUIDE}"
            )
        return out

    def _images(self, x: Tensor) -> Tensor:
        """``x`` on the model's device and dtype, or one line for what the model cannot score."""
        dim = getattr(self.model, "input_dim", None)
        if not isinstance(x, Tensor) or x.dim() != 2 or (dim and x.shape[1] != dim):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise UserError(
                f"images must be a [N, {dim or 'D'}] tensor (one flattened image a row), got "
                f"{shape}; flatten them with x.reshape(len(x), -1)"
            )
        dtype = next(self.model.parameters()).dtype
        x = x.to(self.device, dtype)
        if not ((x == 0) | (x == 1)).all():
            raise UserError(
                "images must be binary (0 or 1), as the Bernoulli likelihood scores them; "
                "binarize with torch.bernoulli(x) or (x > 0.5)"
            )
        return x

    def __repr__(self) -> str:
        nll = (self.metrics or {}).get("test/nll")
        scored = f", test/nll {nll:.2f}" if isinstance(nll, float) else ""
        return f"Run({self.checkpoint}, model {type(self.model).__name__}{scored})"


@contextmanager
def _run_settings(config: DictConfig) -> Iterator[None]:
    """torch's threads and subnormal flushing as the run had them (as ``mode=eval`` sets
    them); the thread count restored on exit. Flushing stays as the run's: torch cannot say
    what it was before."""
    from iwae.launch.device import set_flush_denormal

    threads = torch.get_num_threads()
    if config.get("threads"):
        torch.set_num_threads(int(config.threads))
    set_flush_denormal(bool(config.get("flush_denormal", False)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _checkpoint_of(path: str | Path) -> Path:
    """The checkpoint a run directory or checkpoint path names, or one line."""
    path = Path(path).expanduser()
    if path.is_dir():
        last = path / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(
                f"{path} holds no checkpoints/last.ckpt; pass a run directory train.py wrote, "
                "or a .ckpt file"
            )
        return last
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a run directory or a .ckpt file")
    return path


def _metrics_of(ckpt: Path) -> dict[str, Any] | None:
    """The run's metrics.json if ``ckpt`` is its ``checkpoints/last.ckpt``, else None."""
    if ckpt.name != "last.ckpt" or ckpt.parent.name != "checkpoints":
        return None
    metrics = ckpt.parent.parent / "metrics.json"
    try:
        value = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def load(
    path: str | Path,
    *,
    plugins: Sequence[str] | str | None = None,
    device: torch.device | str = "cpu",
    data_root: str | None = None,
) -> Run:
    """Rebuild a trained run from its directory (its ``checkpoints/last.ckpt``) or a ``.ckpt``.

    Args:
        path: a run directory ``train.py`` wrote, or a checkpoint file.
        plugins: modules of your own to trust for this load (``["mybound"]``), as
            ``plugins=[mybound]`` trusts them on the command line; ``$IWAE_PLUGINS`` and
            installed ``iwae.plugins`` entry points are trusted too. A checkpoint never
            trusts anything itself.
        device: where the model and images go.
        data_root: where the run's dataset files are looked for (default: ``$IWAE_DATA_DIR``
            or ``data``, as ``paths.data_dir``); nothing is downloaded.
    """
    from iwae.launch.assembly import load_run

    ckpt = _checkpoint_of(path)
    if isinstance(plugins, str):
        plugins = [plugins]
    loaded = load_run(ckpt, device, data_root=data_root, plugins=plugins)
    return Run(loaded.model, loaded.config, _metrics_of(ckpt), ckpt, loaded.datamodule)


def train(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    *,
    plugins: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``python train.py <overrides>`` in this process and return its metrics.

    The same checks (before anything is written), the same trust, the same run: Hydra
    composes ``conf/`` with ``overrides`` and runs the job as ``train.py``'s does, writing
    ``.hydra/``, ``train.log``, checkpoints and ``metrics.json`` into the run directory:
    ``output_dir`` if given (``hydra.run.dir``), else ``outputs/<date>/<time>`` under the
    current directory, as ``train.py`` would. ``mode=eval ckpt_path=...`` evaluates instead.
    ``plugins``: modules to trust (the ``plugins=`` key). One run: a sweep (``-m``,
    ``k=1,5``) is ``python train.py -m``'s.
    """
    argv = [str(o) for o in overrides]
    if output_dir is not None:
        argv.append(f"hydra.run.dir={Path(output_dir).absolute()}")
    if plugins:
        argv.append(f"plugins=[{','.join(plugins)}]")
    _refuse_sweeps(argv)
    return _run_in_hydra(argv)


def _refuse_sweeps(argv: list[str]) -> None:
    """One line for a flag or a sweep: `train` runs one job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for word in argv:
        if word.startswith("-"):
            raise UserError(
                f"iwae.train takes overrides (key=value), not {word}; for a sweep or Hydra's "
                "flags run python train.py"
            )
    parser = OverridesParser.create()
    for word in argv:
        try:
            sweep = parser.parse_override(word).is_sweep_override()
        except HydraException:
            continue  # unparsable: the override check words it
        if sweep:
            raise UserError(
                f"iwae.train runs one run, and {word} is a sweep; call it once per value, or "
                "run python train.py -m ..."
            )


def _run_in_hydra(argv: list[str]) -> dict[str, Any]:
    """`prepare_command`, then Hydra's run of ``conf/config.yaml`` with `run_job` as the task
    (what ``@hydra.main`` does for ``train.py``); the run directory's lock released after."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from iwae.launch.cli import CONF_DIR, quiet_third_party_noise
    from iwae.launch.job import prepare_command, run_job
    from iwae.launch.resolvers import register_resolvers
    from iwae.launch.run_lock import release_run_lock

    register_resolvers()
    quiet_third_party_noise()
    argv, new_run_dir = prepare_command(argv)
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("hydra.run.dir=")]
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="train"):
            task = functools.partial(_task, new_run_dir=new_run_dir, job=run_job)
            result = GlobalHydra.instance().hydra.run(  # type: ignore[union-attr]
                config_name="config", task_function=task, overrides=argv
            )
    finally:
        if given:  # prepare_command locked it for this process, as train.py's does
            release_run_lock(given[-1].strip("'\""))
    value = result.return_value
    if isinstance(value, UserError):
        raise value
    return value


def _task(cfg: DictConfig, new_run_dir: bool, job: Any) -> dict[str, Any] | UserError:
    """The job; a refusal returned, not raised, so that Hydra does not print it as a crash."""
    try:
        return job(cfg, new_run_dir)
    except UserError as err:
        return err
