"""The device API: open a Session on a profile, put models on it, measure them."""

from edgecompress.device._open import measure_request, open_session, transport_for
from edgecompress.device._session import Measurement, MeasureRequest, Session, sha256_bytes
from edgecompress.device._transport import LocalTransport, Transport

__all__ = [
    "LocalTransport", "MeasureRequest", "Measurement", "Session", "Transport",
    "measure_request", "open_session", "sha256_bytes", "transport_for",
]
