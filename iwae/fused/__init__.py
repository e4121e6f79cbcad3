"""Several configurations of one sweep trained together (``hydra/launcher=fused``).

- `stacked`: M models of one architecture as one set of stacked parameters (``baddbmm``).
- `objectives`: each member's VAE/IWAE/CIWAE bound and surrogate on ``[M, K, B]`` log weights.
- `adam`: Adam on the stacked parameters with a per-member update mask.
- `group`: a group's training loop, checkpoints, resume and each member's run directory.

The Hydra launcher plugin that uses them is ``hydra_plugins/iwae_fused_launcher``.
"""
