"""The fused launcher's options, registered in Hydra's ConfigStore (as hydra-joblib-launcher
does); ``conf/hydra/launcher/fused.yaml`` extends it, so a misspelt option is refused."""

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.iwae_fused_launcher.fused_launcher.FusedLauncher"
    # Fail with one line instead of splitting configurations that cannot train together.
    single_group: bool = False
    # One group per k (true), or smaller k padded inside the largest k's group (false).
    # null: split on the CPU (a k=1 member padded to k=50 does 50 times its work); pad on a
    # GPU, where a batch-20 step costs launches, not arithmetic.
    split_by_k: Optional[bool] = None  # noqa: UP045 (Hydra's structured configs need Optional)
    # The group checkpoint is written at every epoch end, and also every N steps when set.
    checkpoint_every_n_steps: Optional[int] = None  # noqa: UP045


ConfigStore.instance().store(
    group="hydra/launcher", name="iwae_fused", node=FusedLauncherConf, provider="iwae"
)
