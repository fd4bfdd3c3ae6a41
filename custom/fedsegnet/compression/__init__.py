"""Communication compression of model updates (no FLARE imports).

- :mod:`.sparsify`: top-k selection (sampled threshold or exact ``torch.topk``; per tensor or global).
- :mod:`.quantize`: 8/4-bit per-block quantization (optional stochastic rounding), or float16/32.
- :mod:`.index_coding`: lossless position encodings (varint gaps, bitmap, raw), smallest per tensor.
- :mod:`.codec`: :class:`SparseQuantCodec` and the versioned payload format; :func:`decode_payload`.
- :mod:`.packed`: :class:`~.packed.PackedTensor`, a top-k record kept as received, decoded when read.
- :mod:`.error_feedback`: :class:`ErrorFeedback`, the persisted residual of one sender.
- :mod:`.downlink`: :class:`GlobalModelDownlink` (the server's reference, versions and per-site
  messages, with server-side error feedback) and :func:`rebuild_global_model` (the site side).
"""

from fedsegnet.compression.codec import (
    CODECS,
    MAX_PAYLOAD_VALUES,
    PAYLOAD_FORMAT,
    PAYLOAD_VERSION,
    SparseQuantCodec,
    build_codec,
    check_sparse_form,
    decode_payload,
    is_payload,
    payload_nbytes,
    seeded_generator,
    update_norm,
)
from fedsegnet.compression.downlink import GlobalModelDownlink, rebuild_global_model
from fedsegnet.compression.error_feedback import ErrorFeedback, atomic_torch_save
from fedsegnet.compression.index_coding import PayloadError, decode_indices, encode_indices
from fedsegnet.compression.quantize import dequantize, quantize
from fedsegnet.compression.sparsify import sampled_threshold, select_topk

__all__ = [
    "CODECS", "MAX_PAYLOAD_VALUES", "PAYLOAD_FORMAT", "PAYLOAD_VERSION", "SparseQuantCodec", "build_codec", "check_sparse_form", "decode_payload",
    "is_payload", "payload_nbytes", "seeded_generator", "update_norm", "GlobalModelDownlink", "rebuild_global_model",
    "ErrorFeedback", "PayloadError", "decode_indices", "encode_indices", "dequantize", "quantize", "sampled_threshold", "select_topk", "atomic_torch_save",
]  # fmt: skip
