"""BeatGAN networks (protocol section 4), with a width multiplier for compact students."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sibeatgan.config import BEAT_LENGTH

# The networks are 1-D, but they run on [N, C, 1, L] tensors in channels-last layout, where
# oneDNN's kernels are 1.1-2x faster on CPU than its Conv1d path (fp32 and bf16, forward and
# backward). Two kinds of layer are plain matrix products and run as such: a convolution
# whose kernel spans its whole input (the encoders' last layer, the decoder's first) and one
# with a single input channel (the first layer). oneDNN is slow on both (a few GFLOP/s). The
# modules keep Conv1d's parameters, so state dicts are those of plain Conv1d networks.


def to_2d(x: torch.Tensor) -> torch.Tensor:
    """[N, C, L] -> [N, C, 1, L], channels-last."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def to_1d(x: torch.Tensor) -> torch.Tensor:
    """[N, C, 1, L] -> [N, C, L] (a view)."""
    return x.squeeze(2)


def _from_nlc(y: torch.Tensor) -> torch.Tensor:
    """[N, L, C] (contiguous) -> the same memory seen as [N, C, 1, L] channels-last."""
    return y.permute(0, 2, 1).unsqueeze(2)


class Conv1d(nn.Conv1d):
    """nn.Conv1d's parameters, computed on [N, C, 1, L] channels-last tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        n, c, _, length = x.shape
        if pad == 0 and k == length:  # one output position: [N, L*C] @ [L*C, O]
            w = self.weight.permute(0, 2, 1).reshape(self.out_channels, -1)
            y = F.linear(x.permute(0, 2, 3, 1).reshape(n, -1), w, self.bias)
            return y.view(n, -1, 1, 1)
        if c == 1:  # windows of the single channel: [N, L', k] @ [k, O]
            windows = F.pad(x.reshape(n, length), (pad, pad)).unfold(1, k, stride)
            w = self.weight.view(self.out_channels, k)
            return _from_nlc(F.linear(windows, w, self.bias))
        w = self.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, self.bias, (1, stride), (0, pad))


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d's parameters, computed on [N, C, 1, L] channels-last tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        n, _, _, length = x.shape
        if length == 1 and pad == 0:  # from one position: [N, C] @ [C, k*O]
            w = self.weight.permute(0, 2, 1).reshape(self.in_channels, -1)
            b = None if self.bias is None else self.bias.repeat(k)
            y = F.linear(x.reshape(n, -1), w.T, b)
            return _from_nlc(y.view(n, k, self.out_channels))
        w = self.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(x, w, self.bias, (1, stride), (0, pad))


@dataclass(frozen=True)
class Layers:
    """The layer kit a network is built from, and how tensors enter and leave its layout."""

    conv: type[nn.Conv1d]
    conv_t: type[nn.ConvTranspose1d]
    norm: type[nn.BatchNorm1d | nn.BatchNorm2d]
    enter: Callable[[torch.Tensor], torch.Tensor]
    leave: Callable[[torch.Tensor], torch.Tensor]


FAST = Layers(Conv1d, ConvTranspose1d, nn.BatchNorm2d, to_2d, to_1d)


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


# torch's own 1-D layers, as the original code builds them (the benchmark's reference)
PLAIN = Layers(nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, _unchanged, _unchanged)


def channel_widths(width: int) -> list[int]:
    """Channels after each of the five stride-2 convolutions: width, 2w, 4w, 8w, 16w."""
    return [width * 2**i for i in range(5)]


class Encoder(nn.Module):
    """Conv1d stack 320 -> 10 samples, then a length-10 conv to `out` channels (length 1)."""

    def __init__(self, nc: int, out: int, width: int = 32, layers: Layers = FAST):
        super().__init__()
        w = channel_widths(width)
        blocks: list[nn.Module] = [
            nn.Sequential(layers.conv(nc, w[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True))
        ]
        for c_in, c_out in zip(w[:-1], w[1:], strict=True):
            blocks.append(
                nn.Sequential(
                    layers.conv(c_in, c_out, 4, 2, 1, bias=False),
                    layers.norm(c_out),
                    nn.LeakyReLU(0.2, True),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.last = layers.conv(w[-1], out, 10, 1, 0, bias=False)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the five conv blocks (the last is the 16w x 10 map), in the kit's layout."""
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.feature_maps(x)[-1])


class Decoder(nn.Module):
    """Transposed convs from a length-1 latent back to a `nc` x 320 beat in [-1, 1]."""

    def __init__(self, nz: int, nc: int, width: int = 32, layers: Layers = FAST):
        super().__init__()
        w = channel_widths(width)[::-1]
        net: list[nn.Module] = [
            layers.conv_t(nz, w[0], 10, 1, 0, bias=False),
            layers.norm(w[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(w[:-1], w[1:], strict=True):
            net += [
                layers.conv_t(c_in, c_out, 4, 2, 1, bias=False),
                layers.norm(c_out),
                nn.ReLU(True),
            ]
        net += [layers.conv_t(w[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*net)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Generator(nn.Module):
    def __init__(self, nc: int = 1, nz: int = 50, width: int = 32, layers: Layers = FAST):
        super().__init__()
        self.layers = layers
        self.encoder = Encoder(nc, nz, width, layers)
        self.decoder = Decoder(nz, nc, width, layers)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Reconstruction [N, nc, L] of `x` [N, nc, L] and the encoder's five maps [N, C, L]."""
        maps = self.encoder.feature_maps(self.layers.enter(x))
        x_rec = self.decoder(self.encoder.last(maps[-1]))
        return self.layers.leave(x_rec), [self.layers.leave(m) for m in maps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers.leave(self.decoder(self.encoder(self.layers.enter(x))))


class Discriminator(nn.Module):
    def __init__(self, nc: int = 1, width: int = 32, layers: Layers = FAST):
        super().__init__()
        self.layers = layers
        self.encoder = Encoder(nc, 1, width, layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last encoder map [N, 16w, 10] of `x` [N, nc, L]."""
        return self.layers.leave(self.encoder.feature_maps(self.layers.enter(x))[-1])

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (apply a sigmoid for probabilities), shape [batch]."""
        return self.encoder.last(self.layers.enter(features)).flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classify(self.features(x)))


def init_weights(module: nn.Module) -> None:
    """Conv weights xavier_normal; BatchNorm weight N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
            nn.init.xavier_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_models(
    nc: int, nz: int, width: int, seed: int, layers: Layers = FAST
) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    g, d = Generator(nc, nz, width, layers), Discriminator(nc, width, layers)
    init_weights(g)
    init_weights(d)
    return g, d


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_macs(module: nn.Module, nc: int = 1) -> int:
    """Multiply-adds of one forward pass of one beat, from the convolution shapes."""
    total = 0

    def hook(m, inputs, output):
        nonlocal total
        # each weight is used once per output (conv) or input (transposed conv) position
        positions = output.shape[-1] if isinstance(m, nn.Conv1d) else inputs[0].shape[-1]
        total += positions * m.weight.numel()

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)
    ]
    was_training = module.training
    module.eval()
    with torch.no_grad():
        module(torch.zeros(1, nc, BEAT_LENGTH))
    module.train(was_training)
    for h in handles:
        h.remove()
    return total
