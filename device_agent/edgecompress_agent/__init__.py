"""edgecompress device agent: measures models on the device for the edgecompress host.

Python 3.6+, standard library only; numpy and an inference runtime are imported only where present.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
