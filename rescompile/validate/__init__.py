"""Validation: accuracy and agreement against FP32, latency, gates, reports."""
