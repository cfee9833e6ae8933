"""Fine-tuning a pruned network by knowledge distillation from the unpruned one (Hinton et al., 2015)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy with the labels."""
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    # T^2 keeps the soft term's gradient scale independent of the temperature.
    return alpha * temperature**2 * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    workload,
    steps: int,
    lr: float = 0.01,
    temperature: float = 4.0,
    alpha: float = 0.9,
    weight_decay: float = 5e-5,
    progress: Callable[[int, float], None] | None = None,
    device: str = "cpu",
) -> nn.Module:
    """A fine-tuned copy of ``student`` after ``steps`` SGD steps on the workload's training data.

    The learning rate follows a cosine decay to zero over the steps, so a short run ends settled rather than
    mid-jump. ``progress(step, loss)`` is called after every step. The steps run on ``device`` (a torch device
    name: cpu, cuda, mps); the copy comes back on the CPU, where export runs.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    student = copy.deepcopy(student)
    if steps == 0:
        return student.eval()
    on_cpu = torch.device(device).type == "cpu"
    student = student.to(device)
    # The caller's teacher stays where it is (the run keeps using it on the CPU).
    teacher = (teacher if on_cpu else copy.deepcopy(teacher).to(device)).eval()
    optimiser = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    student.train()
    batches = itertools.chain.from_iterable(itertools.repeat(workload.train))
    for step, (inputs, labels) in enumerate(batches):
        if step >= steps:
            break
        if not on_cpu:
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        loss = distillation_loss(student(inputs), teacher_logits, labels, temperature, alpha)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, loss.item())
    return student.to("cpu").eval()


def resolve_host_device(requested: str) -> str:
    """The torch device for host compute: ``auto`` is CUDA when torch sees a GPU, else Apple's MPS, else the CPU;
    an explicit device that is not there is a ConfigError."""
    from edgecompress.errors import ConfigError

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested == "cuda" and not cuda:
        raise ConfigError("--host-device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
    if requested == "mps" and not mps:
        raise ConfigError("--host-device mps: torch sees no Apple GPU here (torch.backends.mps.is_available())")
    if requested not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--host-device {requested!r}: choose auto, cpu, cuda or mps")
    return requested
