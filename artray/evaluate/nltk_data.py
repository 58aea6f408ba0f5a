"""nltk's WordNet (for nltk's METEOR) built from Debian's WordNet 3.0, and nltk's word tokenizer.

nltk downloads its corpora from the internet (``nltk.download``), which is not always
reachable. Debian ships the same WordNet 3.0 database (``apt-get install wordnet-base
wordnet-sense-index``) under /usr/share/wordnet; nltk reads it as its own once the files
sit in ``<dir>/corpora/wordnet/`` with a ``lexnames`` file (the lexicographer file table
of lexnames(5WN)). `ensure_wordnet` builds that folder once, under
``$ARTRAY_CACHE/nltk_data`` (default ``~/.cache/artray/nltk_data``), and puts it on
``nltk.data.path``. A WordNet nltk already finds (``nltk.download('wordnet')``) is used as is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from artray.errors import UserError

DEBIAN_WORDNET = "/usr/share/wordnet"
APT_PACKAGES = ("wordnet-base", "wordnet-sense-index")
# WordNet 3.0's database files that nltk's WordNetCorpusReader opens (lexnames is written here).
_FILES = ("cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb", "data.adj",
          "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")
# lexnames(5WN): the 45 lexicographer files, numbered from 00; the category is the part of speech's number.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class NltkDataError(UserError, RuntimeError):
    """nltk data that a metric needs is missing; the message says what to install."""


def cache_dir() -> Path:
    """The nltk data folder artray builds (``$ARTRAY_CACHE/nltk_data`` or ``~/.cache/artray/nltk_data``)."""
    base = os.environ.get("ARTRAY_CACHE") or os.path.join("~", ".cache", "artray")
    return Path(base).expanduser() / "nltk_data"


def lexnames_text() -> str:
    """The ``lexnames`` file nltk reads: "NN<TAB>name<TAB>category" per line."""
    return "".join(f"{i:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES))


def build_wordnet(dest: Path, source: str = DEBIAN_WORDNET) -> Path:
    """Copy Debian's WordNet into ``dest/corpora/wordnet`` (atomically, once); return that folder."""
    target = dest / "corpora" / "wordnet"
    if (target / "lexnames").exists():
        return target
    src = Path(source)
    missing = [f for f in _FILES if not (src / f).is_file()]
    if missing:
        raise NltkDataError(
            f"nltk's METEOR needs WordNet, and {src} lacks {', '.join(missing)}: install it with "
            f"`apt-get install {' '.join(APT_PACKAGES)}` (Debian/Ubuntu; .ci/setup.sh does this as root), "
            "or run `python -m nltk.downloader wordnet` where the internet is reachable")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for f in _FILES:
            shutil.copyfile(src / f, tmp / f)
        (tmp / "lexnames").write_text(lexnames_text(), encoding="utf-8")
        os.replace(tmp, target)  # another process may have won the race: its copy is the same
    except OSError:
        if not (target / "lexnames").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_wordnet(source: str = DEBIAN_WORDNET) -> str:
    """Make nltk find WordNet 3.0 (building it from `source` if needed); return where nltk reads it from."""
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        if _find(name):
            return str(nltk.data.find(name))
    root = cache_dir()
    build_wordnet(root, source)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    from nltk.corpus import wordnet

    version = wordnet.get_version()
    if version != "3.0":
        raise NltkDataError(f"nltk read WordNet version {version!r} from {root}, expected 3.0; delete {root} "
                            "and run again")
    return str(root / "corpora" / "wordnet")


def _find(name: str) -> bool:
    import nltk

    try:
        nltk.data.find(name)
        return True
    except LookupError:
        return False


def has_punkt() -> bool:
    """True if nltk finds its trained English Punkt model (what `nltk.word_tokenize` needs)."""
    return _find("tokenizers/punkt_tab/english/")


def word_tokens(text: str, punkt: bool) -> list[str]:
    """nltk's word_tokenize: Punkt sentences, then nltk's Treebank word tokenizer on each.

    With `punkt` False (the trained model is not installed), Punkt runs untrained: it splits
    at every sentence-final mark, abbreviations included ("St. John" becomes two sentences).
    """
    from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer, word_tokenize

    if punkt:
        return word_tokenize(text)
    words = NLTKWordTokenizer()
    return [t for s in PunktSentenceTokenizer().tokenize(text) for t in words.tokenize(s)]
