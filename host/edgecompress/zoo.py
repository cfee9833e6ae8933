"""Reference architectures written here (torchvision does not import beside torch 2.13 on this machine)."""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with the torchvision layout (ImageNet stem, 224x224 inputs); randomly initialised."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    channels = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(channels, width, stride), BasicBlock(width, width)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers).eval()


# --- Small reference networks for the built-in examples -------------------------------------------------------------
# Module names are the names users see in plans ("layer2.0.conv1"), so each layer is a named attribute rather than
# an index in one long Sequential.


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits: two conv stages, global pooling, one linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.fc(self.gap(x).flatten(1))


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """The digits example's network (1x8x8 inputs); randomly initialised."""
    return DigitsCNN(num_classes).eval()


class FashionResNet(nn.Module):
    """A CIFAR-style ResNet for 28x28 grey images: 3x3 stem, three stages of basic blocks, global pooling."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        channels = widths[0]
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            channels = width
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(self.pool(x).flatten(1))


def fashion_resnet(num_classes: int = 10) -> nn.Module:
    """The fashion-mnist ResNet-style reference network (1x28x28 inputs); randomly initialised."""
    return FashionResNet(num_classes).eval()


class InvertedResidual(nn.Module):
    """The MobileNetV2 block: 1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int):
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class FashionMobileNetV2(nn.Module):
    """A MobileNetV2-style network for 28x28 grey images: inverted residual stages, 1x1 head, global pooling."""

    # (expansion, output channels, blocks, stride of the first block), as in the MobileNetV2 paper's table 2,
    # scaled down for 28x28 inputs: a stride-2 stem (as in the paper) leaves 14x14, 7x7 from the second stage on.
    SETTINGS: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 1), (4, 64, 1, 1))

    def __init__(self, num_classes: int = 10, stem: int = 16, head: int = 128):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        channels = stem
        blocks: list[nn.Module] = []
        for expand, width, count, stride in self.SETTINGS:
            for index in range(count):
                blocks.append(InvertedResidual(channels, width, stride if index == 0 else 1, expand))
                channels = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Conv2d(channels, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        x = self.head(self.features(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def fashion_mobilenetv2(num_classes: int = 10) -> nn.Module:
    """The fashion-mnist MobileNetV2-style reference network (1x28x28 inputs); randomly initialised."""
    return FashionMobileNetV2(num_classes).eval()
