"""Typed job configs: one pydantic model per job, loadable from YAML, overridable from the CLI.

Precedence (lowest first): the model's defaults (the published recipes) → a named
preset → ``--config file.yaml`` → ``--set key.sub=value`` → explicit CLI flags.
A config's fields *are* its YAML keys and its ``--flag`` names, so they never drift.
"""

from __future__ import annotations

import argparse
import logging
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from artray.errors import UserError
from artray.schema import SPLITS
from artray.storage import StorageOptions


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the job's config; says which key and why."""



def _known_splits(value: list[str] | None) -> list[str] | None:
    if value is not None and (bad := [s for s in value if s not in SPLITS]):
        raise ValueError(f"unknown splits {bad}; use {list(SPLITS)}")
    return value


# A config field naming corpus splits (None: all of them); an unknown name is a config error.
SplitList = Annotated[list[str] | None, AfterValidator(_known_splits)]

class JobConfig(BaseModel):
    """Base of every job config: unknown keys are errors, not silently ignored; renamed keys
    (`RENAMED`, old → new) are still read, with a warning."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    RENAMED: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """Accept the old names of renamed keys (with a warning); both old and new is an error."""
        if not isinstance(data, dict) or not cls.RENAMED:
            return data
        data = dict(data)
        for old, new in cls.RENAMED.items():
            if old in data and old not in cls.model_fields:
                if new in data:
                    raise ValueError(f"{old} is the old name of {new}; give only {new}")
                logging.getLogger("artray.config").warning("config key %r is deprecated: use %r", old, new)
                data[new] = data.pop(old)
        return data

    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint URL (default: the AWS environment's)")

    def storage_options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.s3_endpoint)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


C = TypeVar("C", bound=JobConfig)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> dict:
    """`["a.b=1", "c=[0.8, 0.1, 0.1]"]` → nested dict; values are parsed as YAML scalars."""
    data: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            raise ConfigError(f"--set {pair!r}: the value is not a valid YAML scalar or list ({exc}); quote it") from exc
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[C], path: str | None = None, overrides: dict | None = None) -> C:
    """Build a `cls` from an optional YAML file plus overrides, with errors naming the key."""
    data: dict = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                              "re-save it as UTF-8") from exc
        except OSError as exc:  # a folder, no permission
            raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from exc
        except (RecursionError, ValueError) as exc:  # nesting too deep; an integer over Python's digit limit
            raise ConfigError(f"config file {path} cannot be parsed ({type(exc).__name__}: {str(exc)[:200]})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        data = loaded
    data = _merge(data, overrides or {})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        lines = [
            f"  {'.'.join(str(p) for p in err['loc']) or '(root)'}: "
            + ("required: give it as a flag, in --config YAML or with --set" if err.get("type") == "missing" else err["msg"])
            + (f" (got {err['input']!r})" if err.get("type") != "missing" and "input" in err and not isinstance(err["input"], dict) else "")
            for err in exc.errors()
        ]
        raise ConfigError(f"invalid {cls.__name__}{where}:\n" + "\n".join(lines)) from exc


def _scalar_type(annotation: Any) -> Any:
    """The CLI-parsable type behind Optional[...] / Literal[...], or None if not a scalar."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else None
    if origin is typing.Literal:
        return str
    if annotation in (str, int, float, bool):
        return annotation
    return None


def _extra(field: FieldInfo) -> dict:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _registry_choices(field: FieldInfo) -> tuple[list[str], str] | None:
    """(choices, what they are) a field takes from the model-family registry, read when the parser is built:
    fields marked ``json_schema_extra={"choices": "families:<kind>"}`` (kind: all, retrieval, captioner, train,
    or presets)."""
    marker = _extra(field).get("choices")
    if not (isinstance(marker, str) and marker.startswith("families:")):
        return None
    from artray import families

    kind = marker.removeprefix("families:")
    if kind == "presets":
        return sorted(families.presets()), ""
    return families.choices(kind), families.help_text(kind)


def _choices(field: FieldInfo) -> list | None:
    """The values a flag accepts: the registry's (see `_registry_choices`) or a Literal's."""
    if registry := _registry_choices(field):
        return registry[0]
    lit = field.annotation
    if typing.get_origin(lit) in (typing.Union, types.UnionType):
        lit = next(a for a in typing.get_args(lit) if a is not type(None))
    return list(typing.get_args(lit)) if typing.get_origin(lit) is typing.Literal else None


def _flag_help(name: str, field: FieldInfo) -> str:
    """What the flag does and its default; test hooks (``json_schema_extra={"hidden": True}``) stay
    settable but out of --help."""
    if _extra(field).get("hidden"):
        return argparse.SUPPRESS
    text = field.description or name.replace("_", " ")
    if registry := _registry_choices(field):
        text = f"{text}. {registry[1]}".rstrip(". ") if registry[1] else text
    if field.is_required():
        text += " (required)"
    else:
        default = field.get_default(call_default_factory=True)
        if default is not None:
            text += f" (default: {default})"
    return text.replace("%", "%%")  # argparse %-formats help strings


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[JobConfig], skip: tuple[str, ...] = ()) -> None:
    """Add `--config`, `--set` and one `--flag` per scalar field of `cls`."""
    parser.add_argument("--config", help="YAML file with the job's config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted for nested keys; also the list and mapping keys "
                             "that have no flag); repeatable")
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        typ = _scalar_type(field.annotation)
        if typ is None:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = _flag_help(name, field)
        if typ is bool:
            parser.add_argument(flag, dest=f"cfg_{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            choices = _choices(field)
            parser.add_argument(flag, dest=f"cfg_{name}", type=typ, default=None, choices=choices, help=help_text,
                                metavar=None if choices else name.upper())


def config_from_args(cls: type[C], args: argparse.Namespace, extra: dict | None = None) -> C:
    """The config from parsed CLI args: YAML file, then --set, then explicit flags and `extra`."""
    overrides = parse_overrides(args.overrides)
    for key, value in vars(args).items():
        if key.startswith("cfg_") and value is not None:
            overrides[key[4:]] = value
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    return load_config(cls, args.config, overrides)
