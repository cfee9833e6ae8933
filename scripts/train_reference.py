"""Train a built-in example's reference network and write the checkpoint shipped in the package.

    nice python scripts/train_reference.py --example fashion-mnist --arch resnet --epochs 8

Training uses the example's training split only (Fashion-MNIST: the first 55,000 training images); the validation
split (the last 5,000) is what the search optimises and the test set (10,000) is reported, never trained on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.examples import ARCHITECTURES
from edgecompress.workload import (
    ArrayLoader,
    checkpoint_path,
    digits_arrays,
    fashion_mnist_arrays,
    reference_network,
    top1,
    train_digits,
)


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in ArrayLoader(images, labels, batch_size=1000)])
    return top1(logits.numpy(), labels)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and random 2-pixel translations (pad with the background value, then crop)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    padded = nn.functional.pad(images, (2, 2, 2, 2), value=float(images.min()))
    dx, dy = (int(v) for v in torch.randint(0, 5, (2,), generator=generator))
    return padded[:, :, dy : dy + images.shape[2], dx : dx + images.shape[3]]


def train_fashion(model: nn.Module, arrays: dict, epochs: int, lr: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = ArrayLoader(*arrays["train"], batch_size=128, shuffle=True, seed=seed)
    # Channels-last lets oneDNN pick its faster depthwise and 1x1 kernels (about 1.4x for the MobileNetV2 here).
    model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.2
    )
    for epoch in range(epochs):
        model.train()
        start = time.time()
        for images, labels in loader:
            optimiser.zero_grad()
            inputs = augment(images, generator).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(inputs), labels, label_smoothing=0.05)
            loss.backward()
            optimiser.step()
            schedule.step()
        print(
            f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, val {accuracy(model, *arrays['val']):.4f}, "
            f"{time.time() - start:.0f} s",
            flush=True,
        )
    return model.to(memory_format=torch.contiguous_format).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--arch", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default: the package's checkpoint path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arch = args.arch or ARCHITECTURES[args.example][0]
    model = reference_network(args.example, arch)
    start = time.time()
    epochs = args.epochs or (30 if args.example == "digits" else 8)
    if args.example == "digits":
        arrays = digits_arrays()
        model = train_digits(model, arrays, epochs=epochs, seed=args.seed)
    else:
        arrays = fashion_mnist_arrays()
        model = train_fashion(model, arrays, epochs=epochs, lr=args.lr, seed=args.seed)
    result = {
        "example": args.example,
        "arch": arch,
        "epochs": epochs,
        "seed": args.seed,
        "train_seconds": round(time.time() - start, 1),
        "val_top1": accuracy(model, *arrays["val"]),
        "test_top1": accuracy(model, *arrays["test"]),
    }
    out = args.out or checkpoint_path(args.example, arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": result}, out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
