"""Oracle kernels: conv."""

__all__: list[str] = []
