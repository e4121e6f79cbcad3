"""``hydra/launcher=fused``: a sweep's configurations trained together (`iwae.fused`)."""
