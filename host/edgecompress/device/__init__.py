"""The device API: open a Session on a profile, put models on it, measure them."""

from edgecompress.device._open import measure_request, open_session, transport_for
from edgecompress.device._pool import DevicePool, DeviceUnavailable, Lease, LinkLost, MemberAway, PoolDown
from edgecompress.device._runtime import check_runtime, gpu_providers, max_opset_for
from edgecompress.device._session import Measurement, MeasureRequest, Session, sha256_bytes
from edgecompress.device._transport import LocalTransport, Transport

__all__ = [
    "DevicePool",
    "DeviceUnavailable",
    "Lease",
    "LinkLost",
    "MemberAway",
    "PoolDown",
    "LocalTransport",
    "MeasureRequest",
    "Measurement",
    "Session",
    "Transport",
    "check_runtime",
    "gpu_providers",
    "max_opset_for",
    "measure_request",
    "open_session",
    "sha256_bytes",
    "transport_for",
]
