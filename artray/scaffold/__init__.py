"""Scaffolding for tests, the demo and benchmarks (tiny checkpoints, sample corpora, the demo), kept apart from the library."""
