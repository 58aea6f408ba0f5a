"""Native corpus formats → the artwork/text schema, plus URL ingest and sample corpora."""
