"""Meta-training: gradient estimators, truncated unrolls, the outer loop and its CLI."""

__all__: list[str] = []
