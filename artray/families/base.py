"""The contract every model family keeps (`ModelFamily`), and `missing_parts`, which checks it.

A family is one object (an instance of a plain class in ``artray/families/<name>.py``) holding
everything artray needs to know about one kind of checkpoint: its names, help text, training
presets, default text context, the re-rankers it supports, how to load it as an encoder (or a
captioner), how to recognise its checkpoints on disk, where its training hooks live and which
tiny scaffold checkpoints stand in for it in tests. Heavy libraries (torch, transformers,
open_clip) are imported inside methods, so reading the registry stays cheap.

Import references (``"package.module:attribute"``) point at code that needs those libraries:
``trainer`` (the per-family training hooks the Ray Train loop calls) and ``tiny`` (the builders
of its tiny random checkpoints in :mod:`artray.scaffold.tiny`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from artray.errors import UserError

if TYPE_CHECKING:
    from artray.encoders import Encoder
    from artray.storage import StorageOptions

Kind = Literal["retrieval", "captioner"]
KINDS: tuple[str, ...] = ("retrieval", "captioner")
RERANKERS: tuple[str, ...] = ("laclip", "itm")


@runtime_checkable
class ModelFamily(Protocol):
    """What a registered family provides. Every member is required; ``trainer`` may be None
    (an evaluation/serving-only family), ``context_length`` None (captioners) and ``tiny``/``presets``
    empty. Other spellings of a name (``blip-retrieval``) are registry aliases, not family members."""

    name: str                   # the one name used in configs, flags, manifests, index records
    kind: Kind                  # "retrieval" (dual encoder: embed/index/serve/evaluate) or "captioner"
    description: str            # one line for --help and the README
    presets: dict[str, dict]    # training recipe name → TrainConfig values (its `family` defaults to `name`)
    context_length: int | None  # text tokens the family sees by default (report's token coverage)
    rerankers: frozenset[str]   # second-stage re-rankers it supports: "laclip" (any dual encoder), "itm"
    trainer: str | None         # "module:Class" of its training hooks (artray.train), None: not trainable
    tiny: dict[str, str]        # tiny checkpoint name → "module:builder" (artray.scaffold.tiny)

    def load(self, checkpoint: str, device: str, dtype: Any, storage_options: StorageOptions | None) -> Any:
        """The model bundle (model in eval mode + processor/tokenizer) of `checkpoint` (hub id, folder, file,
        s3://) on `device` in the torch `dtype`."""

    def load_encoder(self, checkpoint: str, device: str, dtype: Any,
                     storage_options: StorageOptions | None) -> Encoder:
        """A retrieval family's :class:`artray.encoders.Encoder`; a captioner raises `NotAnEncoderError`."""

    def sniff(self, path: Path) -> bool:
        """True when the local file/folder `path` looks like one of this family's checkpoints."""

    # Optional: ``check_train_config(cfg)`` raises ValueError for a TrainConfig this family cannot train
    # (e.g. cnclip's 512-position limit); TrainConfig calls it when present.


REQUIRED_ATTRIBUTES: dict[str, type | tuple[type, ...]] = {
    "name": str, "kind": str, "description": str, "presets": dict,
    "context_length": (int, type(None)), "rerankers": (frozenset, set), "trainer": (str, type(None)), "tiny": dict,
}
REQUIRED_METHODS = ("load", "load_encoder", "sniff")


def missing_parts(family: object) -> list[str]:
    """What `family` lacks or gets wrong against `ModelFamily` (empty: complete), one line each."""
    problems = []
    for attr, typ in REQUIRED_ATTRIBUTES.items():
        if not hasattr(family, attr):
            problems.append(f"no `{attr}`")
        elif not isinstance(getattr(family, attr), typ):
            problems.append(f"`{attr}` is a {type(getattr(family, attr)).__name__}")
    for method in REQUIRED_METHODS:
        if not callable(getattr(family, method, None)):
            problems.append(f"no `{method}()` method")
    if problems:
        return problems
    if family.kind not in KINDS:
        problems.append(f"kind {family.kind!r} is not one of {KINDS}")
    if bad := sorted(set(family.rerankers) - set(RERANKERS)):
        problems.append(f"unknown rerankers {bad} (known: {RERANKERS})")
    if family.kind != "retrieval" and family.rerankers:
        problems.append("only retrieval families re-rank")
    for ref in ([family.trainer] if family.trainer else []) + list(family.tiny.values()):
        if not isinstance(ref, str) or ref.count(":") != 1:
            problems.append(f"import reference {ref!r} is not 'package.module:attribute'")
    for preset, values in family.presets.items():
        if not isinstance(values, dict) or values.get("family", family.name) != family.name:
            problems.append(f"preset {preset!r} must be a dict of TrainConfig values for family {family.name}")
    if family.presets and not family.trainer:
        problems.append("presets without a trainer")
    return problems


def config_json(path: Path) -> dict | None:
    """The ``config.json`` of a transformers checkpoint folder, or None (sniffing helper)."""
    import json

    f = Path(path) / "config.json"
    if not (Path(path).is_dir() and f.is_file()):
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class NotAnEncoderError(UserError, ValueError):
    """A captioner family was asked for an image/text encoder."""


def not_an_encoder(family: object) -> NotAnEncoderError:
    """The error a captioner's ``load_encoder`` raises."""
    return NotAnEncoderError(f"{family.name} is a captioner family: it has no image/text encoder to embed with; "
                             "use a retrieval family (blip, longclip, cnclip, open_clip, hf_clip)")


STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_state_dict_file(path: Path) -> bool:
    """A single weights file (an OpenAI-layout CLIP / Long-CLIP state dict)."""
    return Path(path).is_file() and Path(path).suffix in STATE_DICT_SUFFIXES
