"""BeatGAN networks (protocol section 4), with a width multiplier for compact students."""

from __future__ import annotations

import torch
from torch import nn

BEAT_LENGTH = 320


def channel_widths(width: int) -> list[int]:
    """Channels after each of the five stride-2 convolutions: width, 2w, 4w, 8w, 16w."""
    return [width * 2**i for i in range(5)]


class Encoder(nn.Module):
    """Conv1d stack 320 -> 10 samples, then a length-10 conv to `out` channels (length 1)."""

    def __init__(self, nc: int, out: int, width: int = 32):
        super().__init__()
        w = channel_widths(width)
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Conv1d(nc, w[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        ]
        for c_in, c_out in zip(w[:-1], w[1:], strict=True):
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(c_in, c_out, 4, 2, 1, bias=False),
                    nn.BatchNorm1d(c_out),
                    nn.LeakyReLU(0.2, True),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.last = nn.Conv1d(w[-1], out, 10, 1, 0, bias=False)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the five conv blocks (the last is the 16w x 10 map)."""
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.feature_maps(x)[-1])


class Decoder(nn.Module):
    """Transposed convs from a length-1 latent back to a `nc` x 320 beat in [-1, 1]."""

    def __init__(self, nz: int, nc: int, width: int = 32):
        super().__init__()
        w = channel_widths(width)[::-1]
        layers: list[nn.Module] = [
            nn.ConvTranspose1d(nz, w[0], 10, 1, 0, bias=False),
            nn.BatchNorm1d(w[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(w[:-1], w[1:], strict=True):
            layers += [
                nn.ConvTranspose1d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm1d(c_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose1d(w[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Generator(nn.Module):
    def __init__(self, nc: int = 1, nz: int = 50, width: int = 32):
        super().__init__()
        self.encoder = Encoder(nc, nz, width)
        self.decoder = Decoder(nz, nc, width)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = self.encoder.feature_maps(x)
        return self.decoder(self.encoder.last(maps[-1])), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class Discriminator(nn.Module):
    def __init__(self, nc: int = 1, width: int = 32):
        super().__init__()
        self.encoder = Encoder(nc, 1, width)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.feature_maps(x)[-1]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (apply a sigmoid for probabilities), shape [batch]."""
        return self.encoder.last(features).flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classify(self.features(x)))


def init_weights(module: nn.Module) -> None:
    """Conv weights xavier_normal; BatchNorm weight N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
            nn.init.xavier_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm1d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_models(nc: int, nz: int, width: int, seed: int) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    g, d = Generator(nc, nz, width), Discriminator(nc, width)
    init_weights(g)
    init_weights(d)
    return g, d


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
