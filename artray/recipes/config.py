"""The typed recipe file and where recipes live.

A recipe (``jobs/recipes/<name>.yaml``) is data: what paper it reproduces, its ``params`` (the
published settings, with ``when`` overlays such as ``scale=tiny`` or ``dataset=artcap``), what the
code running it must offer (``requires``) and its ``steps``: each an existing stage job (``import``,
``augment``, ``caption``, ``train``, ``evaluate-captions``, ``evaluate-retrieval``, ``embed``,
``index``, ``report``, and ``table``) with that job's own config, whose values may hold
``${corpus}``, ``${out}``, ``${params.…}`` and ``${steps.<name>.<key>}`` references.

`--set key=value` on a run sets a param (``--set scale=tiny``), or a step's config key when the
first part names a step (``--set train-human.epochs=1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from artray.config import _merge, parse_overrides
from artray.jobs import JOBS, recipe_stages
from artray.recipes.refs import RecipeError

NAME = r"^[a-z0-9][a-z0-9_-]*$"


def _recipes_dir() -> Path:
    """jobs/recipes/ of this checkout (a job's working_dir comes first on its path), else of the current
    directory (artray installed as a package, run from a checkout)."""
    beside = Path(__file__).resolve().parents[2] / "jobs" / "recipes"
    return beside if beside.is_dir() else Path.cwd() / "jobs" / "recipes"


RECIPES_DIR = _recipes_dir()


class Requirement(BaseModel):
    """A capability the steps need from this checkout: a config field or a registered model family."""

    model_config = ConfigDict(extra="forbid")
    stage: str | None = Field(None, description="with field: the stage whose config must have it")
    field: str | None = None
    family: str | None = Field(None, description="a model family that must be registered")
    why: str = Field(description="what the recipe uses it for")

    @model_validator(mode="after")
    def _one(self):
        if bool(self.family) == bool(self.stage and self.field):
            raise ValueError("a requirement names either stage + field, or family")
        return self

    def missing(self) -> str | None:
        """Why this checkout lacks it, or None when it has it."""
        if self.family:
            from artray import families

            if self.family in families.names():
                return None
            return f"model family {self.family!r} is not registered ({self.why})"
        from artray.import_refs import load_ref

        if self.field in load_ref(JOBS[self.stage].config).model_fields:
            return None
        return f"the {self.stage} config has no {self.field!r} field ({self.why})"


class Step(BaseModel):
    """One stage job with its config."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    stage: Literal[tuple(recipe_stages())]  # type: ignore[valid-type]
    about: str = Field("", description="one line: what this step does in the paper's experiment")
    config: dict[str, Any]


class Recipe(BaseModel):
    """One published experiment: its settings, its steps and the table it ends with."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    title: str
    paper: str = Field(description="citation of the source work")
    code: str | None = Field(None, description="the source work's code, where the settings were read")
    about: str = ""
    corpus: str = Field(description="what --corpus must be (an artray corpus of …)")
    requires: list[Requirement] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    when: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                            description="'param=value' → params laid over the defaults then")
    steps: list[Step] = Field(min_length=1)
    path: str | None = None

    @model_validator(mode="after")
    def _check(self):
        names = [s.name for s in self.steps]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"step names must be unique: {dupes}")
        if clash := sorted(set(names) & set(self.params)):
            raise ValueError(f"params and steps share names {clash} (--set could not tell them apart)")
        for key in self.when:
            param, sep, _ = key.partition("=")
            if not sep or param not in self.params:
                raise ValueError(f"when key {key!r} must be 'param=value' with a param of the recipe "
                                 f"({sorted(self.params)})")
        return self

    def missing_requirements(self) -> list[str]:
        return [m for r in self.requires if (m := r.missing())]


def recipe_names(directory: Path = RECIPES_DIR) -> list[str]:
    """The recipes shipped under jobs/recipes/ (file names without .yaml)."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_recipe(name_or_path: str, directory: Path = RECIPES_DIR) -> Recipe:
    """A shipped recipe by name, or a recipe YAML file by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = directory / f"{name_or_path}.yaml"
        if not path.exists():
            raise RecipeError(f"no recipe {name_or_path!r}: use one of {', '.join(recipe_names(directory))} "
                              "(artray recipe list), or the path of a recipe .yaml file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold a mapping")
    try:
        return Recipe.model_validate({**data, "path": str(path)})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise RecipeError(f"recipe file {path} is invalid:\n" + "\n".join(lines)) from exc


def split_overrides(recipe: Recipe, pairs: list[str]) -> tuple[dict, dict[str, dict]]:
    """`--set` pairs → (param overrides, step name → config overrides); an unknown first key is an error."""
    params, steps = {}, {}
    step_names = {s.name for s in recipe.steps}
    for key, value in parse_overrides(list(pairs)).items():
        if key in recipe.params:
            params[key] = value
        elif key in step_names and isinstance(value, dict):
            steps[key] = value
        else:
            raise RecipeError(f"--set {key}…: {recipe.name} has no param or step {key!r}; params: "
                              f"{', '.join(sorted(recipe.params))}; steps (--set <step>.<key>=…): "
                              f"{', '.join(s.name for s in recipe.steps)}")
    return params, steps


def effective_params(recipe: Recipe, overrides: dict) -> dict:
    """The defaults, each `when` overlay whose condition holds (in file order), then `overrides`."""
    chosen = _merge(recipe.params, overrides)
    params = dict(recipe.params)
    for key, overlay in recipe.when.items():
        param, _, value = key.partition("=")
        if str(chosen.get(param)) == value:
            params = _merge(params, overlay)
    return _merge(params, overrides)
