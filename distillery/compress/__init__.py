"""Compression for deployment: verified export (ONNX, torch.export), int8 quantization, and the comparison
of distillation against quantization, all measured in ONNX Runtime."""
from distillery.compress.comparison import CompressReport, compress_report
from distillery.compress.export import DEFAULT_TOLERANCE, FORMATS, ExportResult, export_model
from distillery.compress.quantize import MODES, QuantizeResult, choose_mode, quantize_model

__all__ = [
    "CompressReport",
    "DEFAULT_TOLERANCE",
    "ExportResult",
    "FORMATS",
    "MODES",
    "QuantizeResult",
    "choose_mode",
    "compress_report",
    "export_model",
    "quantize_model",
]
