"""Distillation methods: one module per method, each a readable script over shared stages.

A method module is named in `METHODS` by the recipe's `method.name` and imported only when
used (a lazy string registry: listing methods imports none of them). Each module has:

- `DESCRIPTION`: one line for `raydistill methods`;
- `validate(cfg)`: every check that can fail before work starts (bad arms, data kinds);
- `prepare(cfg, sw)` → the prepared inputs (teacher, rows, generations), computed once;
- `train(cfg, prep, sw, callbacks)` → result rows (resumable through the ledger);
- `run(cfg)` → the report dict: prepare → generate → train → evaluate → report.

Ray Tune sweeps and the CLI call the same functions, so a recipe behaves the same in a
sweep trial, on a laptop and under `ray job submit`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from raydistill.config import ConfigError

# method name → module (imported lazily)
METHODS: dict[str, str] = {
    "cod": "raydistill.methods.cod",
    "weakness": "raydistill.methods.weakness",
    "explain": "raydistill.methods.explain",
}


def get_method(name: str) -> ModuleType:
    """The module of method `name`; a ConfigError names the known ones."""
    if name not in METHODS:
        raise ConfigError(f"method.name: {name!r} is not one of {', '.join(sorted(METHODS))}")
    return importlib.import_module(METHODS[name])


def describe() -> dict[str, str]:
    """name → one-line description (imports each module: for `raydistill methods`)."""
    return {name: get_method(name).DESCRIPTION for name in sorted(METHODS)}
