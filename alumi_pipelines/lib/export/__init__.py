"""Export stage logic: a YOLO checkpoint to ONNX, INT8 ONNX, TensorRT plans and signed edge releases.

``onnx_export`` (export and ONNX metadata; :class:`~alumi_pipelines.lib.export.onnx_export.ExportError`),
``dfl`` (the DFL head rewrite), ``yolo_data`` (labelled images, calibration choice), ``predict`` (detections
on ONNX Runtime and PyTorch), ``accuracy`` (mAP50, box matching, parity), ``int8`` (static quantisation) with
its graph rewrites in ``int8_graph``, ``latency`` (CPU timing), ``tensorrt_plan`` and ``release``.
"""
