"""The model-family registry: every family name, choice list, preset table and capability derives from it.

``REGISTRY`` maps a family name to the import reference of its family object (see
:class:`artray.families.base.ModelFamily`); the objects live one per module in this package.
Adding a family is one new module plus one line here (or a runtime :func:`register` call, for
tests and plugins). Importing this package imports no torch, transformers or Ray: the CLI builds
its flag choices from :func:`names` without loading a model library.

- :func:`names` — registered names, optionally of one kind (``"retrieval"``, ``"captioner"``,
  ``"train"`` = has a trainer)
- :func:`get` — the family object (imported on first use); aliases (``blip-retrieval``) resolve;
  an unknown name raises :class:`UnknownFamilyError` listing the known ones
- :func:`canonical` — a name or alias → the family's name (validators use it)
- :func:`presets` — every family's training presets by preset name (``TrainConfig.preset``)
- :func:`trainer_class` — a trainable family's training hooks (``artray.train.<family>``), imported
- :func:`load_encoder` — a retrieval family's :class:`artray.encoders.Encoder` of a checkpoint (what embed,
  index, serve and evaluate call); ``artray.encoders`` holds the interface and knows no family
- ``RetrievalFamily`` / ``TrainFamily`` / ``AnyFamily`` — pydantic field types: a ``str`` checked against the
  registry when the config is validated, marked ``{"choices": "families:<kind>"}`` for the CLI
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, Field

from artray.errors import UserError
from artray.import_refs import load_ref

if TYPE_CHECKING:
    from artray.encoders import Encoder
    from artray.storage import StorageOptions

# name → "module:attribute" of its family object (or, registered at run time, the object itself);
# the order is the order of CLI choices and help text.
REGISTRY: dict[str, Any] = {
    "longclip": "artray.families.longclip:LONGCLIP",
    "clip": "artray.families.clip:CLIP",
    "cnclip": "artray.families.cnclip:CNCLIP",
    "blip": "artray.families.blip:BLIP",
    "blip-captioner": "artray.families.blip_captioner:BLIP_CAPTIONER",
    "git-captioner": "artray.families.git_captioner:GIT_CAPTIONER",
    "open_clip": "artray.families.open_clip:OPEN_CLIP",
    "hf_clip": "artray.families.hf_clip:HF_CLIP",
}
# Other spellings accepted wherever a family is named; normalised to the registered name.
ALIASES: dict[str, str] = {"blip-retrieval": "blip"}
KIND_FILTERS = ("all", "retrieval", "captioner", "train")

_loaded: dict[str, Any] = {}


class UnknownFamilyError(UserError, ValueError):
    """A family name that is not registered (or not of the kind asked for); the message lists the names."""


def register(name: str, ref: str | Any, aliases: tuple[str, ...] = ()) -> None:
    """Add (or replace) family `name`: `ref` is a "module:attribute" reference to its object, or the object."""
    REGISTRY[name] = ref
    _loaded.pop(name, None)
    for alias in aliases:
        ALIASES[alias] = name


def unregister(name: str) -> None:
    """Remove family `name` and its aliases (tests clean up with it)."""
    REGISTRY.pop(name, None)
    _loaded.pop(name, None)
    for alias in [a for a, n in ALIASES.items() if n == name]:
        del ALIASES[alias]


class IncompleteFamilyError(TypeError):
    """A registered family object lacks a part of the `ModelFamily` contract; the message lists them."""


def _family(name: str) -> Any:
    if name not in _loaded:
        from artray.families.base import missing_parts

        ref = REGISTRY[name]
        family = load_ref(ref) if isinstance(ref, str) else ref
        if problems := missing_parts(family):
            raise IncompleteFamilyError(f"model family {name!r} ({ref}) does not keep the ModelFamily contract "
                                        f"(artray.families.base): " + "; ".join(problems))
        _loaded[name] = family
    return _loaded[name]


def _kind_of(name: str) -> str:
    """The kind a family's name belongs to, read from its object (cheap: family modules import no torch)."""
    return _family(name).kind


def names(kind: str | None = None) -> list[str]:
    """Registered family names, optionally only those of `kind` ("retrieval", "captioner", "train": with a trainer)."""
    if kind in (None, "all"):
        return list(REGISTRY)
    if kind not in KIND_FILTERS:
        raise ValueError(f"unknown family kind {kind!r}: use one of {KIND_FILTERS}")
    if kind == "train":
        return [n for n in REGISTRY if _family(n).trainer]
    return [n for n in REGISTRY if _kind_of(n) == kind]


def choices(kind: str | None = None) -> list[str]:
    """What a CLI flag accepts for a family of `kind`: `names(kind)` and the aliases of those names."""
    allowed = names(kind)
    return allowed + [alias for alias, name in ALIASES.items() if name in allowed]


def canonical(name: str, kind: str | None = None) -> str:
    """`name` (or an alias) → the registered name; `UnknownFamilyError` unless it is one of `names(kind)`."""
    name = ALIASES.get(name, name)
    allowed = names(kind)
    if name not in allowed:
        what = {"retrieval": "encoder ", "captioner": "captioner ", "train": "trainable "}.get(kind or "", "model ")
        raise UnknownFamilyError(f"unknown {what}family {name!r}: use one of {', '.join(allowed)}")
    return name


def get(name: str, kind: str | None = None) -> Any:
    """The family object of `name` (or an alias), checked to be of `kind` if given."""
    return _family(canonical(name, kind))


def trainer_class(name: str) -> Any:
    """The training hooks class of family `name` (``ModelFamily.trainer``), imported; constructed with a
    TrainConfig, it builds the module, collates batches, computes the loss and exports (:mod:`artray.train`)."""
    return load_ref(get(name, kind="train").trainer)


def load_encoder(family: str, checkpoint: str, device: str = "auto", dtype: str = "auto",
                 storage_options: StorageOptions | None = None) -> Encoder:
    """Load `checkpoint` as a `family` encoder (a retrieval family, or an alias of one) on `device`
    ("auto": CUDA if present) in `dtype` ("auto": fp16 on CUDA, fp32 on CPU)."""
    from artray.encoders import canonical_checkpoint, resolve_device, resolve_dtype

    fam = get(family, kind="retrieval")
    device = resolve_device(device)
    return fam.load_encoder(canonical_checkpoint(checkpoint), device, resolve_dtype(dtype, device), storage_options)


def presets() -> dict[str, dict]:
    """Every trainable family's presets: preset name → TrainConfig values, ``family`` filled in."""
    out: dict[str, dict] = {}
    for n in names("train"):
        for preset, values in _family(n).presets.items():
            if preset in out:
                raise ValueError(f"preset {preset!r} is defined by two families ({out[preset]['family']}, {n})")
            out[preset] = {"family": n, **values}
    return out


def help_text(kind: str | None = None) -> str:
    """'name: description' of each family of `kind`, for --help and error messages."""
    return "; ".join(f"{n}: {_family(n).description}" for n in names(kind))


def _validator(kind: str | None):
    def check(value: str) -> str:
        return canonical(value, kind)

    return AfterValidator(check)


def _optional(kind: str | None):
    def check(value: str | None) -> str | None:
        return None if value is None else canonical(value, kind)

    return AfterValidator(check)


# Config field types: validated against the registry at validation time (a family registered at run time
# is accepted); the marker tells artray.config.add_config_arguments to offer names(kind) as --flag choices.
RetrievalFamily = Annotated[str, _validator("retrieval"), Field(json_schema_extra={"choices": "families:retrieval"})]
OptionalRetrievalFamily = Annotated[str | None, _optional("retrieval"),
                                    Field(json_schema_extra={"choices": "families:retrieval"})]
TrainFamily = Annotated[str, _validator("train"), Field(json_schema_extra={"choices": "families:train"})]
AnyFamily = Annotated[str, _validator(None), Field(json_schema_extra={"choices": "families:all"})]
