"""Ray Data pipelines, one module per stage: ingest, augment, caption, embed."""
