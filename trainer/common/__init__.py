"""Foundations every layer may use: the user-error type, validators, files, images."""
