"""edgecompress: compress a PyTorch model until it meets budgets measured on the target device."""

from edgecompress_agent import __version__

__all__ = ["__version__"]
