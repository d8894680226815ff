"""Network building blocks: MLPs, the image CNN encoder/decoder, a layer-normed GRU cell.

All modules take and return plain tensors; leading dimensions (B, T, ...) are
flattened inside and restored on the way out.

Mixed precision (``train.precision: bfloat16``, under ``torch.autocast``): the matrix
products and convolutions inside run in bfloat16, but every module returns float32, and
the GRU's gates and state are float32, so the distributions, losses and the recurrent
state built on these outputs keep full precision. Outside autocast ``.float()`` is free.
"""

from __future__ import annotations

import torch
from torch import nn


def activation(name: str) -> type[nn.Module]:
    return {"elu": nn.ELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh}[name]


class MLP(nn.Module):
    """Linear -> norm -> activation, ``layers`` times, then an optional output layer."""

    def __init__(
        self,
        inp: int,
        out: int | None,
        layers: int,
        units: int,
        act: str = "elu",
        norm: str = "layer",
    ):
        super().__init__()
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods.append(nn.Linear(inp, units, bias=norm != "layer"))
            if norm == "layer":
                mods.append(nn.LayerNorm(units))
            mods.append(activation(act)())
            inp = units
        if out is not None:
            mods.append(nn.Linear(inp, out))
        self.net = nn.Sequential(*mods)
        self.out_dim = out if out is not None else inp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).float()


class ConvEncoder(nn.Module):
    """Images (..., H, W, C) uint8-range floats in [-0.5, 0.5] -> flat embedding.

    DreamerV2's encoder: four 4x4 stride-2 convolutions, depth doubling each layer
    (fewer for small images).
    64x64 input -> 31 -> 14 -> 6 -> 2 spatial; embedding size 8 * depth * 2 * 2.
    """

    def __init__(self, shape: tuple[int, int, int], depth: int, act: str = "elu"):
        super().__init__()
        h, w, c = shape
        mods: list[nn.Module] = []
        size = min(h, w)
        for i in range(4):  # fewer layers for images smaller than 64 x 64 (down to 4 x 4)
            if size < 4:
                break
            mods += [nn.Conv2d(c, depth * 2**i, 4, 2), activation(act)()]
            c, size = depth * 2**i, (size - 4) // 2 + 1
        if not mods:
            raise ValueError(f"images must be at least 4 x 4 pixels, got {shape}")
        self.net = nn.Sequential(*mods)
        with torch.no_grad():
            self.out_dim = int(self.net(torch.zeros(1, shape[2], h, w)).numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)  # (N, C, H, W)
        return self.net(x).reshape(*lead, -1).float()


class ConvDecoder(nn.Module):
    """Features -> images (..., H, W, C): DreamerV2's transposed-conv decoder (5, 5, 6, 6)."""

    def __init__(self, inp: int, shape: tuple[int, int, int], depth: int, act: str = "elu"):
        super().__init__()
        self.shape = shape
        self.linear = nn.Linear(inp, 32 * depth)
        kernels = (5, 5, 6, 6)
        chans = [32 * depth, 4 * depth, 2 * depth, depth, shape[2]]
        mods: list[nn.Module] = []
        for i, k in enumerate(kernels):
            mods.append(nn.ConvTranspose2d(chans[i], chans[i + 1], k, 2))
            if i < len(kernels) - 1:
                mods.append(activation(act)())
        self.net = nn.Sequential(*mods)
        with torch.no_grad():
            natural = self.net(torch.zeros(1, 32 * depth, 1, 1)).shape[-2:]
        self.resize = tuple(natural) != tuple(shape[:2])

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        # The first transposed convolution sees a 1 x 1 image: it is a matrix product with its
        # kernel (the same parameters), which a CPU runs 3x faster than the convolution.
        first = self.net[0]
        x = (x @ first.weight.flatten(1)).unflatten(1, first.weight.shape[1:])
        # Channels-last from here on (as the encoder's permuted input already is): the CPU's
        # transposed convolutions run 15% faster so, and the output needs no copy to (H, W, C).
        x = (x + first.bias[:, None, None]).contiguous(memory_format=torch.channels_last)
        x = self.net[1:](x)  # (N, C, 64, 64)
        if self.resize:
            x = nn.functional.interpolate(
                x, size=self.shape[:2], mode="bilinear", align_corners=False
            )
        return x.permute(0, 2, 3, 1).reshape(*lead, *self.shape).float()


class NormGRUCell(nn.Module):
    """GRU cell with layer norm over the gates and update bias -1 (DreamerV2's RSSM cell)."""

    def __init__(self, inp: int, size: int, norm: bool = True):
        super().__init__()
        self.size = size
        self.linear = nn.Linear(inp + size, 3 * size, bias=not norm)
        self.norm = nn.LayerNorm(3 * size) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)).float())
        reset, cand, update = parts.split(self.size, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * h


class RunningNorm(nn.Module):
    """Owns running statistics of vector observations and standardises them with them.

        y = clip((x - mean) / max(std, min_std), -clip, clip)

    ``update`` merges a training batch into the count, mean and variance (Chan et al.'s
    parallel form of Welford's algorithm), so the statistics converge to those of all the data
    trained on and then barely move. Vectors in metres, radians and rad/s then reach the
    encoder at one scale, and the decoder reconstructs the standardised values. The
    statistics are buffers: they travel with the policy's weights to the robot.
    """

    def __init__(self, size: int, min_std: float = 1e-2, clip: float = 10.0) -> None:
        super().__init__()
        self.min_std, self.clip = min_std, clip
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        n, count = x.shape[0], self.count
        if n == 0:
            return
        mean, var = x.mean(0), x.var(0, unbiased=False)
        total = count + n
        delta = mean - self.mean.double()
        new_mean = self.mean.double() + delta * n / total
        m2 = self.var.double() * count + var * n + delta**2 * count * n / total
        self.mean.copy_(new_mean.float())
        self.var.copy_((m2 / total).float())
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = self.var.sqrt().clamp(min=self.min_std)
        return ((x - self.mean) / std).clamp(-self.clip, self.clip)
