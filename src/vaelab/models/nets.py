"""Encoder and decoder networks by architecture (ARCHS): the study's conv net, an MLP, a residual net, conv4."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.core.errors import VaelabError


def need_multiple_of_4(shape: tuple[int, int, int], network: str) -> None:
    """The conv, resnet and hierarchical networks halve the resolution twice."""
    if shape[1] % 4 or shape[2] % 4:
        raise VaelabError(
            f"the {network} network needs image height and width divisible by 4, got "
            f"{shape[1]}x{shape[2]} (use --net mlp, or resize the images)"
        )


class ImageModel(nn.Module):
    """What every model of images offers besides its own math: sizes for memory checks and the mean image."""

    shape: tuple[int, int, int]
    likelihood: nn.Module

    @property
    def n_dims(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def n_outputs(self) -> int:
        """Floats the decoder emits per image: the likelihood's parameters (for memory checks)."""
        return self.likelihood.channels(self.shape[0]) * self.shape[1] * self.shape[2]

    def x_hat(self, params: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(params)


# ConvTranspose2d(k=4, s=2, p=1) as a sub-pixel convolution (Shi et al. 2016): output pixel (2i + r, 2j + s) sees
# input rows i-1, i (phase r = 0; kernel rows 3, 1) or i, i+1 (r = 1; kernel rows 2, 0), so a 3x3 convolution to 4x the
# channels followed by pixel_shuffle(2) gives the same sums. _PHASE_TAPS[r, t, k] = 1 where phase r takes input offset
# t - 1 with kernel row k.
_PHASE_TAPS = torch.zeros(2, 3, 4)
_PHASE_TAPS[0, 0, 3] = _PHASE_TAPS[0, 1, 1] = _PHASE_TAPS[1, 1, 2] = _PHASE_TAPS[1, 2, 0] = 1.0


class UpConv(nn.ConvTranspose2d):
    """A 4x4 stride-2 transposed convolution (the parameters and state-dict keys of nn.ConvTranspose2d) that, in
    inference, computes as a sub-pixel convolution when it has few output channels: oneDNN's transposed convolution
    to 1-8 channels is 2x slower on CPU than the equivalent 3x3 convolution to 4x those channels, and the IWAE's
    decoder passes are most of evaluation. Training keeps the transposed convolution (with its backward pass the
    sub-pixel form gained nothing: 0.95-1.05x on this CPU). Same numbers up to float rounding (tests/test_models.py)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1)
        self.subpixel = 4 * out_channels <= in_channels  # wider layers are faster as oneDNN's own

    def subpixel_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        taps = _PHASE_TAPS.to(self.weight)
        w = torch.einsum("rak,sbl,iokl->orsiab", taps, taps, self.weight)  # (out, r, s, in, 3, 3): copies, exact
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        return w.reshape(4 * self.out_channels, self.in_channels, 3, 3), bias

    def forward(self, x, output_size=None):
        if not self.subpixel or output_size is not None or torch.is_grad_enabled():
            return super().forward(x, output_size)
        w, b = self.subpixel_weight()
        if x.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)
        return F.pixel_shuffle(F.conv2d(x, w, b, padding=1), 2)


def fp32_out(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The decoder's last layer in fp32 under bf16 autocast: its outputs are the likelihood's parameters, and a bf16
    mean (8 significant bits) is as coarse as a pixel bin of the discretized logistic (2/255), which biased the IWAE
    of a Fashion-MNIST model by +0.33 nats (3 standard errors). The layer is small; fp32 costs little."""
    if not torch.is_autocast_enabled(h.device.type):
        return layer(h)
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.float())


class ConvNetEncoder(nn.Module):
    """A conv stack `self.conv` (ending in Flatten), then Dense `hidden` + ReLU on its features and the condition."""

    conv: nn.Module
    fc: nn.Module

    def forward(self, x, cond=None):
        h = self.conv(x)
        return self.fc(h if cond is None else torch.cat([h, cond], 1))


class ConvEncoder(ConvNetEncoder):
    """The study's reference encoder: Conv(C->32,3,s2)+ReLU, Conv(32->64,3,s2)+ReLU, Dense 256+ReLU."""

    def __init__(self, shape: tuple[int, int, int], n_cond: int = 0, hidden: int = 256):
        super().__init__()
        need_multiple_of_4(shape, "conv")
        c, h, w = shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(64 * (h // 4) * (w // 4) + n_cond, hidden), nn.ReLU())
        self.out_dim = hidden


class ConvDecoder(nn.Module):
    """The mirror: Dense 256, Dense to 64xH/4xW/4, ConvT 64->32 k4 s2, ConvT 32->out k4 s2 (the likelihood's channels)."""

    def __init__(self, shape: tuple[int, int, int], in_dim: int, out_channels: int, hidden: int = 256):
        super().__init__()
        c, h, w = shape
        self.grid = (64, h // 4, w // 4)
        # in-place ReLUs: each follows a layer whose backward does not read its output, and the IWAE (its decoder
        # passes are most of evaluation) ran 1.17x faster without the copies: 28.6 s -> 24.4 s for 2,000 test images
        # at K = 100, medians of 3 interleaved, the same value (2026-12-08, 2-core AMD EPYC, AVX2, fp32)
        self.fc = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 64 * (h // 4) * (w // 4)),
            nn.ReLU(inplace=True),
        )
        self.deconv = nn.Sequential(UpConv(64, 32), nn.ReLU(inplace=True), UpConv(32, out_channels))

    def forward(self, z):
        h = self.deconv[:-1](self.fc(z).view(-1, *self.grid))
        return fp32_out(self.deconv[-1], h)


def _dense_stack(dims: list[int], act: type[nn.Module]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), act()]
    return layers


class MLPEncoder(nn.Module):
    """Dense layers of `hidden` units with activation `act` on the flattened image (and the condition)."""

    def __init__(self, shape, n_cond: int = 0, hidden: tuple[int, ...] = (512, 256), act: type[nn.Module] = nn.ReLU):
        super().__init__()
        dims = [shape[0] * shape[1] * shape[2] + n_cond, *hidden]
        self.net = nn.Sequential(*_dense_stack(dims, act))
        self.out_dim = dims[-1]

    def forward(self, x, cond=None):
        h = x.flatten(1)
        return self.net(h if cond is None else torch.cat([h, cond], 1))


class MLPDecoder(nn.Module):
    """Dense layers of `hidden` units with activation `act`, then one to the likelihood's parameters per pixel."""

    def __init__(
        self,
        shape,
        in_dim: int,
        out_channels: int,
        hidden: tuple[int, ...] = (256, 512),
        act: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        c, h, w = shape
        self.out_shape = (out_channels, h, w)
        dims = [in_dim, *hidden]
        self.net = nn.Sequential(*_dense_stack(dims, act), nn.Linear(dims[-1], out_channels * h * w))

    def forward(self, z):
        return fp32_out(self.net[-1], self.net[:-1](z)).view(-1, *self.out_shape)


class GatedDense(nn.Module):
    """h * sigmoid(g): a linear layer gated by another (Dauphin et al. 2017), the unit of Tomczak & Welling's MLPs."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.h, self.g = nn.Linear(d_in, d_out), nn.Linear(d_in, d_out)
        for layer in (self.h, self.g):  # He initialisation, as the VampPrior code initialises its layers
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.h(x) * torch.sigmoid(self.g(x))


class GatedMLPEncoder(nn.Module):
    """Tomczak & Welling 2018 (section 5, the VampPrior's MLP): two gated dense layers of 300 units."""

    def __init__(self, shape, n_cond: int = 0, hidden: tuple[int, ...] = (300, 300)):
        super().__init__()
        dims = [shape[0] * shape[1] * shape[2] + n_cond, *hidden]
        self.net = nn.Sequential(*(GatedDense(a, b) for a, b in zip(dims[:-1], dims[1:])))
        self.out_dim = dims[-1]

    def forward(self, x, cond=None):
        h = x.flatten(1)
        return self.net(h if cond is None else torch.cat([h, cond], 1))


class GatedMLPDecoder(nn.Module):
    """Its mirror: two gated dense layers of 300 units, then a linear layer to the likelihood's parameters."""

    def __init__(self, shape, in_dim: int, out_channels: int, hidden: tuple[int, ...] = (300, 300)):
        super().__init__()
        c, h, w = shape
        self.out_shape = (out_channels, h, w)
        dims = [in_dim, *hidden]
        self.net = nn.Sequential(*(GatedDense(a, b) for a, b in zip(dims[:-1], dims[1:])))
        self.out = nn.Linear(dims[-1], out_channels * h * w)

    def forward(self, z):
        return fp32_out(self.out, self.net(z)).view(-1, *self.out_shape)


class ResBlock(nn.Module):
    """A pre-activation residual block (He et al. 2016b): x + Conv(SiLU(Conv(SiLU(x)))). The branch's last conv starts
    at zero, so every block starts as the identity and a deep stack trains from the first step (SkipInit, De & Smith
    2020; VDVAE scales the same layer down). No batch norm: statistics would differ between training batches and
    the K-fold batches of importance sampling."""

    def __init__(self, c: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or c
        self.branch = nn.Sequential(
            nn.SiLU(), nn.Conv2d(c, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, c, 3, padding=1)
        )
        nn.init.zeros_(self.branch[-1].weight)
        nn.init.zeros_(self.branch[-1].bias)

    def forward(self, x):
        return x + self.branch(x)


def res_stage(c: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock(c) for _ in range(depth)))


class ResNetEncoder(nn.Module):
    """Residual encoder: a 3x3 stem to `width` channels, then `depth` blocks per resolution, with a stride-2 conv
    between resolutions (H -> H/2 -> H/4, channels width -> 2 width), then Dense `hidden`."""

    def __init__(
        self, shape: tuple[int, int, int], n_cond: int = 0, width: int = 64, depth: int = 2, hidden: int = 256
    ):
        super().__init__()
        need_multiple_of_4(shape, "resnet")
        c, h, w = shape
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            res_stage(width, depth),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            res_stage(2 * width, depth),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            res_stage(2 * width, depth),
            nn.SiLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(2 * width * ((h + 3) // 4) * ((w + 3) // 4) + n_cond, hidden), nn.SiLU())
        self.out_dim = hidden

    def forward(self, x, cond=None):
        h = self.net(x)
        return self.fc(h if cond is None else torch.cat([h, cond], 1))


class ResNetDecoder(nn.Module):
    """The mirror: Dense to 2 width x H/4 x W/4, blocks, nearest-neighbour upsampling + 3x3 conv between
    resolutions (no checkerboard of transposed convs), blocks, and a 3x3 conv to the likelihood's channels."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        in_dim: int,
        out_channels: int,
        width: int = 64,
        depth: int = 2,
        hidden: int = 256,
    ):
        super().__init__()
        c, h, w = shape
        self.grid = (2 * width, h // 4, w // 4)
        self.fc = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * width * (h // 4) * (w // 4))
        )
        self.net = nn.Sequential(
            res_stage(2 * width, depth),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, width, 3, padding=1),
            res_stage(width, depth),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            res_stage(width, depth),
            nn.SiLU(),
            nn.Conv2d(width, out_channels, 3, padding=1),
        )

    def forward(self, z):
        return fp32_out(self.net[-1], self.net[:-1](self.fc(z).view(-1, *self.grid)))


class Conv4Encoder(ConvNetEncoder):
    """The encoder of the disentanglement studies (Higgins et al. 2017; Locatello et al. 2019, table 1): four 4x4
    stride-2 convs (32, 32, 64, 64 channels) + ReLU, Dense 256 + ReLU. Sized for 64x64 sprites: the Dense layer
    sees 64 x H/16 x W/16 (1,024 numbers) where the study's conv net would see 16,384."""

    def __init__(self, shape: tuple[int, int, int], n_cond: int = 0, hidden: int = 256):
        super().__init__()
        c, h, w = shape
        if h % 16 or w % 16:
            raise VaelabError(f"the conv4 network needs image height and width divisible by 16, got {h}x{w}")
        chans = (c, 32, 32, 64, 64)
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(64 * (h // 16) * (w // 16) + n_cond, hidden), nn.ReLU())
        self.out_dim = hidden


class Conv4Decoder(nn.Module):
    """Its mirror: Dense 256, Dense to 64 x H/16 x W/16, four 4x4 stride-2 transposed convs (64, 32, 32, out)."""

    def __init__(self, shape: tuple[int, int, int], in_dim: int, out_channels: int, hidden: int = 256):
        super().__init__()
        c, h, w = shape
        self.grid = (64, h // 16, w // 16)
        self.fc = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 64 * (h // 16) * (w // 16)), nn.ReLU()
        )
        chans = (64, 64, 32, 32, out_channels)
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [UpConv(a, b), nn.ReLU()]
        self.deconv = nn.Sequential(*layers[:-1])  # no ReLU after the last: it emits the likelihood's parameters

    def forward(self, z):
        h = self.deconv[:-1](self.fc(z).view(-1, *self.grid))
        return fp32_out(self.deconv[-1], h)


@dataclass(frozen=True)
class Arch:
    """An encoder/decoder pair; `sized` ones take the config's width and depth."""

    encoder: type[nn.Module]
    decoder: type[nn.Module]
    sized: bool = False


ARCHS: dict[str, Arch] = {
    "conv": Arch(ConvEncoder, ConvDecoder),
    "mlp": Arch(MLPEncoder, MLPDecoder),
    # the likelihood tables' MLPs: Burda et al. 2016 (one stochastic layer: 2 x 200 tanh units each way) and
    # Tomczak & Welling 2018 (2 x 300 gated units each way)
    "mlp_tanh": Arch(
        partial(MLPEncoder, hidden=(200, 200), act=nn.Tanh), partial(MLPDecoder, hidden=(200, 200), act=nn.Tanh)
    ),
    "mlp_gated": Arch(GatedMLPEncoder, GatedMLPDecoder),
    "resnet": Arch(ResNetEncoder, ResNetDecoder, sized=True),
    "conv4": Arch(Conv4Encoder, Conv4Decoder),
}


def he_normal(module: nn.Module) -> None:
    """Every linear layer's weights drawn from N(0, 2 / fan_in), biases as torch made them: the `he_init` of Tomczak &
    Welling's code (jmtomczak/vae_vampprior, utils/nn.py; He et al. 2015, eq. 10)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))


# how a vae's encoder, posterior and decoder start (the config's `init`); "torch" leaves torch's initialisation
INITS: dict[str, Callable[[nn.Module], None] | None] = {"torch": None, "he": he_normal}
