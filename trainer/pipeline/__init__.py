"""Running the trainer inside ML pipelines (TFX)."""
