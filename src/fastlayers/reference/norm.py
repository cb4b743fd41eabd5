"""Oracle kernels: norm."""

__all__: list[str] = []
