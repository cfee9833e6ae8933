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
) -> nn.Module:
    """A fine-tuned copy of ``student`` after ``steps`` SGD steps on the workload's training data.

    The learning rate follows a cosine decay to zero over the steps, so a short run ends settled rather than
    mid-jump. ``progress(step, loss)`` is called after every step.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    student = copy.deepcopy(student)
    if steps == 0:
        return student.eval()
    teacher = teacher.eval()
    optimiser = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    student.train()
    batches = itertools.chain.from_iterable(itertools.repeat(workload.train))
    for step, (inputs, labels) in enumerate(batches):
        if step >= steps:
            break
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        loss = distillation_loss(student(inputs), teacher_logits, labels, temperature, alpha)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, loss.item())
    return student.eval()
