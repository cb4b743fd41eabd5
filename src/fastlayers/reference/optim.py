"""Oracle kernels: optim."""

__all__: list[str] = []
