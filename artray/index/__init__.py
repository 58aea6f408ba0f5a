"""Vector indexes over embedding rows (FAISS), their metadata, and the encoder they belong to.

- ``artray.index.build``        `artray index build`: embed output → galleries at a URI
- ``artray.index.retrieval``    ``load_index`` → ``RetrievalIndex.search`` / ``vector`` / ``info``
- ``artray.index.faiss_types``  flat / ivf / hnsw and their parameters
"""
