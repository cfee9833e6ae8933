"""Keep an ONNX model loadable by older onnxruntime releases than the one on the host."""

from __future__ import annotations

import onnx

# The default domain is always declared: it carries the model's opset.
_DEFAULT_DOMAINS = ("", "ai.onnx")


def drop_unused_domains(data: bytes) -> bytes:
    """The model without opset imports for domains none of its nodes use.

    onnxruntime's quantizer declares every domain it knows (``ai.onnx.ml`` 5, ``com.microsoft``...) whether used or
    not, and an older onnxruntime refuses the whole model for one it considers "under development" (1.15 rejects
    ``ai.onnx.ml`` 5), although no node needs it.
    """
    proto = onnx.load_model_from_string(data)
    used = {node.domain for node in proto.graph.node}
    for function in proto.functions:
        used.add(function.domain)
        used.update(node.domain for node in function.node)
    keep = [o for o in proto.opset_import if o.domain in used or o.domain in _DEFAULT_DOMAINS]
    if len(keep) == len(proto.opset_import):
        return data
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    return proto.SerializeToString()
