"""Evaluation: metrics, latency, plots and the report."""
