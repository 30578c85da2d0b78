"""Datasets: the registry, fetching (sha256, safe extraction), readers, image IO, the prepared cache."""
