"""Shipping a trained model: SavedModel for TF Serving, TFLite for devices, and their parity report."""
