"""The search API on Ray Serve (see serve_configs/ and the README's "Search API").

- ``artray.serve.app``          FastAPI ingress + ``build_app`` (the Serve config's import_path)
- ``artray.serve.deployments``  one model: encoder (``@serve.batch``) + FAISS index, in the ingress or its own deployment
- ``artray.serve.proxy``        the proxy callback: 503 + Retry-After for a request whose replica died under it
- ``artray.serve.config``       the app's ``args``: models, layout, limits, auth, CORS
- ``artray.serve.queries``      request parsing and validation (every bad request → 4xx)
- ``artray.serve.client``       `artray search`
- ``artray.serve.local``        `serve run` as a subprocess (tests, bench, demo; tiny indexes: ``artray.scaffold``)
"""
