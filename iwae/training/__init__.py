"""The Lightning training loop around the core: the LightningModule, its callbacks (checkpoints,
preemption, RNG state, diagnostics, the non-finite guard), exact resume, the optimizer, the
loggers, what a run writes, and fine-tuning. Imports the core, never `iwae.launch`."""
