"""Benchmarks: optimizers against tuned Adam, speed, and the demo."""

__all__: list[str] = []
