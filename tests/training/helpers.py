"""Small synthetic batches and models shared by the training tests."""

import torch
import torch.nn as nn

from fedsegnet.networks import HybridTransformerUNet

TINY = {"channels": (8, 16, 32), "num_heads": 2, "num_layers": 1}


def sphere_batch(seed: int, batch: int = 2, size: int = 16, num_classes: int = 3) -> dict:
    """A batch where class k is a ball of radius 3 + k around a random centre; image = label + noise."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    labels = torch.zeros(batch, 1, size, size, size)
    for b in range(batch):
        centre = torch.randint(5, size - 5, (3,), generator=g).float()
        dist = (grid - centre[:, None, None, None]).square().sum(0).sqrt()
        for k in range(num_classes - 1, 0, -1):
            labels[b, 0][dist <= 2 + 2 * (num_classes - k)] = k
    image = labels / (num_classes - 1) + 0.1 * torch.randn(labels.shape, generator=g)
    return {"image": image, "label": labels}


def tiny_net(seed: int = 0, out_channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return HybridTransformerUNet(1, out_channels, **TINY)


class Wrapped(nn.Module):
    """Stands in for torch.compile's OptimizedModule: the real model lives in ``_orig_mod``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._orig_mod = model

    def forward(self, x):
        return self._orig_mod(x)
