"""Promotion gate logic and the MLflow model registry (versions, aliases)."""
