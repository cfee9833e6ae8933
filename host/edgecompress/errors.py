"""One hierarchy of errors; the CLI turns each into one line and an exit code."""


class EdgecompressError(Exception):
    """Anything edgecompress reports to the user as one clear line."""

    exit_code = 2


class ConfigError(EdgecompressError):
    """Bad flags, profiles, budgets, plans or config files."""


class WorkloadError(EdgecompressError):
    """A user model or data entry point that does not import or returns the wrong thing."""


class ExportError(EdgecompressError):
    """A model that cannot be exported, quantized or evaluated."""


class BudgetError(EdgecompressError):
    """A budget that cannot be checked (for example energy on a device without a power source)."""


class DeviceError(EdgecompressError):
    """The device cannot be reached or the agent cannot be started."""

    exit_code = 3


class AgentError(DeviceError):
    """The agent answered a request with an error frame."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class ConnectionLost(DeviceError):
    """The link to the agent broke in the middle of a request; the request may be retried."""
