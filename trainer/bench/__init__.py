"""Benchmarks: `python -m trainer.bench train ...` measures training throughput, MFU and the trainer's overhead."""
