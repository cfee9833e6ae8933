"""The built-in examples by name, and the check of where a workload comes from (an example, or the model and data
entry points). Neither needs torch: a command checks its workload's source before it imports the heavy parts, so a
mistake is answered in a second or two."""

from __future__ import annotations

from edgecompress.errors import WorkloadError

EXAMPLES: tuple[str, ...] = ("digits", "fashion-mnist")
ARCHITECTURES: dict[str, tuple[str, ...]] = {"digits": ("cnn",), "fashion-mnist": ("resnet", "mobilenetv2")}


def check_workload_source(
    example: str | None, model: str | None, data: str | None, data_dir: str | None, arch: str | None
) -> None:
    """WorkloadError unless the arguments name one workload: a built-in example (with one of its architectures) or
    both user entry points."""
    if example is not None:
        if model is not None or data is not None:
            raise WorkloadError("give either an example or --model/--data entry points, not both")
        check_example(example, data_dir)
        if arch is not None and arch not in ARCHITECTURES[example]:
            raise WorkloadError(
                f"example {example} has no architecture {arch!r}; choose one of {', '.join(ARCHITECTURES[example])}"
            )
        return
    if model is None or data is None:
        raise WorkloadError("give --example, or both --model and --data entry points (package.module:attribute)")
    if arch is not None or data_dir is not None:
        raise WorkloadError("--arch and --data-dir apply to the built-in examples only")


def check_example(example: str, data_dir: str | None) -> None:
    """WorkloadError unless ``example`` is a built-in example that takes ``data_dir`` (digits has no data folder)."""
    if example not in EXAMPLES:
        raise WorkloadError(f"unknown example {example!r}; choose one of {', '.join(EXAMPLES)}")
    if example == "digits" and data_dir is not None:
        raise WorkloadError("the digits example ships with scikit-learn; --data-dir does not apply")
