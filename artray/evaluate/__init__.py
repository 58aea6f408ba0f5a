"""Evaluation: caption-similarity metrics (`caption_metrics`), retrieval metrics and reports."""
