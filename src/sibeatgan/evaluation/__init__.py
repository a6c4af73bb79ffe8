"""Evaluation: the anomaly score, detection metrics, the pipeline's figures."""
