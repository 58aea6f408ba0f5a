"""Paper recipes: each published experiment as data (a YAML file under jobs/recipes/) that chains
existing stage jobs and ends with the paper's table beside this run's numbers.

- `artray.recipes.config` — the typed recipe file, where recipes live, params and their `when` overlays
- `artray.recipes.refs` — `${corpus}`, `${out}`, `${params.x}`, `${steps.<name>.<key>}` references
- the stage jobs a step may name are the jobs table's (`artray.jobs.recipe_stages`)
- `artray.recipes.runner` — runs the steps in order, skipping those whose output is complete
- `artray.recipes.table` — the `table` step: published vs this run, as Markdown + JSON
"""
