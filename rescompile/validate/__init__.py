"""Validation: accuracy and agreement against FP32, latency, the gates and the typed Report (rendered by ``report/``)."""
