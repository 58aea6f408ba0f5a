"""Scaffolding kept apart from the library: tiny random checkpoints for tests, the demo and smoke runs
(:mod:`artray.scaffold.tiny`). Nothing in the library's job code imports it."""
