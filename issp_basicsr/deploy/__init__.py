"""Shipping a pruned model: a compressed checkpoint, sparse CPU execution and an efficiency report.

* :mod:`.compressed`: the compressed checkpoint format and its load API (``load_into``, ``load_sparse``).
* :mod:`.sparse_modules`: ``convert_to_sparse`` swaps pruned Conv2d/Linear layers for CSR-based ones.
* :mod:`.efficiency`: parameter, MAC, size and latency counts (``basicsr report-efficiency``).
* :mod:`.onnx_export`: ONNX export of the dense-with-zeros network, checked with onnxruntime when installed.

The command-line modules (``export``, ``efficiency.main``) read BasicSR option files through
:mod:`.network_options`; everything importable from here works on any ``nn.Module`` without BasicSR.
"""
from .compressed import (CompressedFormatError, compress_checkpoint, decompress_checkpoint, load_checkpoint,
                         load_compressed, load_into, load_sparse, load_state_dict, save_compressed)
from .efficiency import efficiency_report, format_table
from .sparse_modules import (SparseConv2d, SparseLinear, clear_workspace, convert_to_dense, convert_to_sparse,
                             plan_sparse_layers)

__all__ = [
    'CompressedFormatError', 'compress_checkpoint', 'decompress_checkpoint', 'load_checkpoint', 'load_compressed',
    'load_into', 'load_sparse', 'load_state_dict', 'save_compressed', 'efficiency_report', 'format_table',
    'SparseConv2d', 'SparseLinear', 'clear_workspace', 'convert_to_dense', 'convert_to_sparse', 'plan_sparse_layers'
]
