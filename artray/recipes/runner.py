"""Run a recipe: its steps in order, each skipped when its output is already complete.

What each step did is recorded in ``<out>/_recipe.json`` (per step: a fingerprint of its stage and
resolved config, and what it wrote: ``output``, ``export``). A step is skipped when that record
matches its config now *and* its output is still complete (the stage's ``_manifest.json``, the
train export, the report's manifest). So a recipe killed or failed in step k runs again from
step k (and a step whose config, or an input step's, changed runs again); the stage itself
resumes its partial output as it always does (committed rows, the latest training checkpoint
under the same run name).
"""

from __future__ import annotations

import hashlib
import json
import re
import time

from artray import corpus, storage
from artray.config import ConfigError, _merge, load_config
from artray.import_refs import load_ref
from artray.jobs import JOBS
from artray.recipes.config import Recipe, effective_params, split_overrides
from artray.recipes.refs import RecipeError, resolve

STATE = "_recipe.json"


def plan(recipe: Recipe, corpus_uri: str, out: str, overrides: list[str] = (), steps: dict | None = None,
         strict: str | None = None) -> tuple[dict, list[tuple[str, str, dict]]]:
    """(params, [(step name, stage, resolved config)]): step references resolve where `steps` knows them, and
    must for the step named `strict` (the one about to run)."""
    param_over, step_over = split_overrides(recipe, list(overrides))
    params = effective_params(recipe, param_over)
    context = {"corpus": corpus_uri.rstrip("/"), "out": out.rstrip("/"), "params": params, "steps": steps or {}}
    context["params"] = params = resolve(params, context, strict=False, where=f"{recipe.name}.params")
    resolved = []
    for step in recipe.steps:
        cfg = resolve(step.config, context, strict=step.name == strict, where=f"{recipe.name}.{step.name}")
        resolved.append((step.name, step.stage, _merge(cfg, step_over.get(step.name, {}))))
    return params, resolved


def fingerprint(stage: str, config: dict, inputs: list[str] = ()) -> str:
    """A step's identity: its stage, its resolved config and the fingerprints of the steps it reads (so a step
    whose input step ran again with other settings runs again too, though its config text is the same)."""
    return hashlib.sha256(json.dumps([stage, config, list(inputs)], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def step_inputs(step) -> list[str]:
    """The steps `step` refers to (``${steps.<name>.…}``), sorted."""
    return sorted(set(re.findall(r"\$\{steps\.([^.}]+)\.", json.dumps(step.config))))


def step_result(stage: str, cfg, returned) -> dict:
    """What a finished step offers later steps: ``output`` (its output URI) and, for train, ``export``."""
    out = getattr(cfg, JOBS[stage].output_key)
    if stage == "train":
        return {"output": storage.join(cfg.output, cfg.name), "export": (returned or {}).get("export")}
    return {"output": out}


def output_complete(stage: str, result: dict, options) -> bool:
    """Whether a step's recorded output is still there and finished."""
    if stage == "train":
        return bool(result.get("export")) and storage.exists(result["export"], options)
    if stage == "report":
        return storage.exists(result["output"] + ".manifest.json", options)
    return storage.read_json(storage.join(result["output"], corpus.MANIFEST), options) is not None


def _state(out: str, recipe: Recipe, options) -> dict:
    state = storage.read_json(storage.join(out, STATE), options) or {"recipe": recipe.name, "steps": {}}
    if state.get("recipe") != recipe.name:
        raise RecipeError(f"{out} holds a run of recipe {state.get('recipe')!r}, not {recipe.name!r}: "
                          "use another --out")
    return state


def run_recipe(recipe: Recipe, corpus_uri: str, out: str, overrides: list[str] = (), *, address: str | None = None,
               s3_endpoint: str | None = None) -> dict:
    """Run (or resume) `recipe` on `corpus_uri`, writing under `out`; returns the state (per step: its record)."""
    from artray.storage import StorageOptions

    opts = StorageOptions(endpoint_url=s3_endpoint)
    if missing := recipe.missing_requirements():
        raise RecipeError(f"recipe {recipe.name} cannot run on this checkout: " + "; ".join(missing))
    if corpus.read_manifest(corpus_uri, opts) is None:
        raise RecipeError(f"--corpus {corpus_uri} has no {corpus.MANIFEST}: give {recipe.corpus} (the output of "
                          "`artray corpus import`, or `artray corpus ingest` for URL-only Artpedia)")
    started = time.time()
    state = _state(out, recipe, opts)
    plan(recipe, corpus_uri, out, overrides)  # every override and param reference checked before step 1 runs
    done: dict[str, dict] = {}
    prints: dict[str, str] = {}  # step → its fingerprint in this run
    total, ray_started = len(recipe.steps), False
    for i, step in enumerate(recipe.steps, 1):
        _, resolved = plan(recipe, corpus_uri, out, overrides, steps=done, strict=step.name)
        config = resolved[i - 1][2]
        if s3_endpoint and "s3_endpoint" not in config:
            config = {**config, "s3_endpoint": s3_endpoint}
        fp = fingerprint(step.stage, config, [prints[s] for s in step_inputs(step) if s in prints])
        prints[step.name] = fp
        record = state["steps"].get(step.name)
        label = f"[recipe] {recipe.name} {i}/{total} {step.name} ({step.stage})"
        if record and record.get("fingerprint") == fp and output_complete(step.stage, record["result"], opts):
            print(f"{label}: complete, skipped")
            done[step.name] = record["result"]
            continue
        job = JOBS[step.stage]
        try:
            cfg = load_config(load_ref(job.config), None, config)
        except ConfigError as exc:
            raise RecipeError(f"recipe {recipe.name}, step {step.name} ({step.stage}): {exc}") from exc
        if job.ray and not ray_started:
            from artray.runtime import init_ray

            init_ray(address)
            ray_started = True
        print(f"{label}: running" + (f" — {step.about}" if step.about else ""))
        t0 = time.time()
        returned = load_ref(job.run)(cfg)
        result = step_result(step.stage, cfg, returned)
        state["steps"][step.name] = {"stage": step.stage, "fingerprint": fp, "result": result,
                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "wall_s": round(time.time() - t0, 1)}
        storage.write_json_atomic(storage.join(out, STATE), state, opts)
        done[step.name] = result
    print(f"[recipe] {recipe.name}: {total} steps done in {time.time() - started:.0f}s → {out}")
    return state
