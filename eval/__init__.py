"""Evaluation: verification metrics and protocols, reconstruction attacks, benchmarks."""
