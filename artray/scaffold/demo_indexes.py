"""Tiny demo indexes: the real chain (sample corpora → import → `artray embed` → `artray index
build`) with the tiny checkpoints, for two families: Long-CLIP on the Artpedia sample and
Chinese-CLIP on the CulTi sample. The search API's tests, bench/serve.py and the demo serve them."""

from __future__ import annotations

from pathlib import Path

from artray import corpus

# model name → (sample corpus, import format, tiny checkpoint, encoder family)
DEMO_MODELS = {"longclip": ("artpedia", "artpedia", "longclip", "longclip"),
               "cnclip": ("culti", "cnclip", "cnclip", "cnclip")}


def demo_indexes(workdir: str, n: int = 50, tiny_dir: str | None = None,
                 names: tuple[str, ...] = tuple(DEMO_MODELS)) -> dict[str, str]:
    """Build (or reuse) the tiny demo indexes of models `names` under `workdir`; returns {name: index path}.

    Tiny checkpoints go to `tiny_dir` (default ``<workdir>/models``). Needs a running Ray (the
    embed job runs on it). Every step resumes or skips finished work.
    """
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.index.build import IndexConfig, build_index
    from artray.scaffold.tiny import make_tiny
    from artray.scaffold.sample_corpora import make_samples
    from artray.stages.embed import EmbedConfig, run_embed

    root = Path(workdir).absolute()
    samples = make_samples(str(root / "samples"), n=n)
    models = make_tiny(tiny_dir or str(root / "models"))
    out = {}
    for name in names:
        sample, fmt, tiny, family = DEMO_MODELS[name]
        corpus_uri, emb, idx = (str(root / d / name) for d in ("corpora", "embeddings", "indexes"))
        if corpus.read_manifest(corpus_uri) is None:
            import_corpus(ImportConfig(format=fmt, src=samples[sample], dest=corpus_uri))
        if corpus.read_manifest(emb) is None:
            run_embed(EmbedConfig(input=corpus_uri, output=emb, family=family, checkpoint=models[tiny], device="cpu"))
        if corpus.read_manifest(idx) is None:
            build_index(IndexConfig(embeddings=emb, output=idx))
        out[name] = idx
    return out
