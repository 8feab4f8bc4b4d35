"""Evaluation: metrics, plan scoring, model evaluation."""
