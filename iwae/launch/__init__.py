"""From a command line to a run: the pre-check before Hydra, config and memory checks, the
device, what a checkpoint's config may build, the run lock, assembly of objects from the
config, the resolvers, and the two entry points (`run.train`, `eval_checkpoint`)."""
