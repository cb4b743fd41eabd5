"""The PyTorch peer of the benchmarks: the same network as a fastlayers ``Sequential``, with a
copy of its weights. PyTorch is a benchmark peer only, never a dependency: ``torch`` is
``None`` when it cannot be imported, and the benchmarks then leave its column out.
"""

from __future__ import annotations

from fastlayers import layers

try:
    import torch
except ImportError:
    torch = None


def torch_model(model):
    """The same network in PyTorch, holding a copy of ``model``'s weights."""
    mods, ndim = [], 4
    for layer in model:
        if isinstance(layer, layers.Conv2d):
            m = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                stride=layer.stride, padding=layer.padding, bias=layer.b is not None)
            m.weight.data = torch.from_numpy(layer.W.data.copy())
        elif isinstance(layer, layers.Affine):
            if ndim == 4:
                mods.append(torch.nn.Flatten())
                ndim = 2
            m = torch.nn.Linear(*layer.W.data.shape, bias=layer.b is not None)
            m.weight.data = torch.from_numpy(layer.W.data.T.copy())  # ours is (in, out)
        elif isinstance(layer, layers.BatchNorm):
            cls = torch.nn.BatchNorm2d if ndim == 4 else torch.nn.BatchNorm1d
            # PyTorch's momentum weighs the new batch; ours weighs the running value.
            m = cls(layer.num_features, eps=layer.eps, momentum=1.0 - layer.momentum)
        elif isinstance(layer, layers.ReLU):
            m = torch.nn.ReLU()
        elif isinstance(layer, layers.MaxPool2d):
            m = torch.nn.MaxPool2d(layer.kernel_size, stride=layer.stride, padding=layer.padding)
        elif isinstance(layer, layers.Dropout):
            m = torch.nn.Dropout(layer.p)
        else:
            raise TypeError(f"no PyTorch counterpart for {layer!r}")
        if getattr(layer, "b", None) is not None:
            m.bias.data = torch.from_numpy(layer.b.data.copy())
        mods.append(m)
    return torch.nn.Sequential(*mods)
