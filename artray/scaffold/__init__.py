"""Scaffolding kept apart from the library, for tests, the demo and benchmarks: tiny random checkpoints
(:mod:`artray.scaffold.tiny`), sample corpora and the demo. Nothing in the library's job code imports it."""
