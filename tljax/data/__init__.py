"""Datasets and offline data assets for tljax."""
