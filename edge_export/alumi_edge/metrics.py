"""Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


class EdgeMetrics:
    """Latency histograms, detections per class, rejected requests, model version info, feedback queue depth,
    frames the capture store dropped."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.detect_latency = Histogram(
            "alumi_edge_detect_latency_seconds",
            "Time to answer /v1/detect (decode to response)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "alumi_edge_stage_latency_seconds",
            "Time per inference stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.detections = Counter(
            "alumi_edge_detections", "Boxes returned, per class", ["class_name"], registry=self.registry
        )
        self.rejected = Counter(
            "alumi_edge_rejected_requests", "Requests refused, per reason", ["reason"], registry=self.registry
        )
        self.model_info = Gauge(
            "alumi_edge_model_info", "Model being served (value 1)", ["version", "runtime"], registry=self.registry
        )
        self.feedback_pending = Gauge(
            "alumi_edge_feedback_pending", "Feedback records waiting for sync", registry=self.registry
        )
        self.capture_dropped = Gauge(
            "alumi_edge_capture_dropped_frames",
            "Frames the capture store dropped since start (writer queue full or write failed)",
            registry=self.registry,
        )

    def watch_capture(self, store) -> None:
        """Expose the frames the capture store dropped (read when /metrics is rendered, no database access)."""
        self.capture_dropped.set_function(lambda: store.dropped)

    def set_model(self, version: str, runtime: str) -> None:
        """Expose only the current model in the info gauge."""
        self.model_info.clear()
        self.model_info.labels(version=version, runtime=runtime).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
