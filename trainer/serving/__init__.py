"""Shipping a model: SavedModel, TFLite, prediction."""
