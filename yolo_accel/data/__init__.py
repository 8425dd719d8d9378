"""Datasets: scanning, augmentation, loading, and the embedded demo dataset."""
