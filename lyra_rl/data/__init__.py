"""Synthetic data: procedural 3D scenes with known geometry and broken (3D-inconsistent) video variants."""
