"""alumi-edge: serve signed defect-detection releases on edge devices (ONNX Runtime or TensorRT)."""

__version__ = "0.1.0"
