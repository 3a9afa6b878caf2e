"""The training core: config, losses, optimizers, the train step, evaluation."""
