"""Native corpus formats → the artwork/text schema (`importer`), and URL ingest (`fetch`).

The bundled sample corpora live apart from the library, in `artray.scaffold`."""
