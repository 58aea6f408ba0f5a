"""What `artray recipe list` and `artray recipe show` print: recipes, their params and steps with configs."""

from __future__ import annotations

import yaml

from artray.jobs import JOBS
from artray.recipes.config import Recipe, load_recipe, recipe_names
from artray.recipes.runner import plan


def list_text() -> str:
    """One line per shipped recipe: name, steps, title."""
    lines = []
    for name in recipe_names():
        r = load_recipe(name)
        lines.append(f"{name:<22} {len(r.steps):>2} steps  {r.title}")
    return "\n".join(lines)


def show_text(recipe: Recipe, corpus: str = "<corpus>", out: str = "<out>", overrides: list[str] = ()) -> str:
    """The recipe as it would run: source, params, requirements, then each step's resolved config and output."""
    params, steps = plan(recipe, corpus, out, overrides)
    head = [f"{recipe.name}: {recipe.title}", f"paper: {recipe.paper}"]
    if recipe.code:
        head.append(f"code: {recipe.code}")
    head += [f"--corpus: {recipe.corpus}", "", recipe.about.strip(), ""]
    missing = recipe.missing_requirements()
    for req in recipe.requires:
        what = f"family {req.family}" if req.family else f"{req.stage}.{req.field}"
        state = "MISSING" if req.missing() in missing else "ok"
        head.append(f"requires {what} ({req.why}): {state}")
    head += ["", "params (--set key=value; 'when' overlays: " + (", ".join(recipe.when) or "none") + "):",
             yaml.safe_dump(params, sort_keys=False, allow_unicode=True, width=110).rstrip(), ""]
    body = []
    for i, (step, (name, stage, config)) in enumerate(zip(recipe.steps, steps), 1):
        output = config.get(JOBS[stage].output_key)
        body.append(f"step {i}/{len(steps)} {name}: {stage}" + (f" — {step.about}" if step.about else ""))
        body.append(f"  output: {output}")
        body.append("  " + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=110)
                    .rstrip().replace("\n", "\n  "))
    return "\n".join(head + body)
