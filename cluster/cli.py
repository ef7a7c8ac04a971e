"""`raydistill` command line: thin, with heavy imports inside each command.

Every command takes a recipe and `key=value` overrides, so `raydistill run
recipes/sst2-cod.yaml out_dir=runs/x student.alpha=0.5` is the same job on a laptop and
under `ray job submit`.

The console is quiet by default: a progress line per stage, raydistill's own messages,
warnings and errors (in full, a failed Ray Train worker's traceback included). The
driver's full log goes to `<out_dir>/logs/driver.log`, with a README there pointing at
the Ray session's logs (copied there for a local cluster). `--verbose` (anywhere on the
command line, or `RAYDISTILL_VERBOSE=1`) brings back the libraries' INFO lines and the
workers' output (`ray.init(log_to_driver=True)`). Verbosity is how a run is watched, not
what it computes, so it is a flag and not a recipe key.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("raydistill.cli")
_LOGS_DIR: list[Path] = []  # the run folder's logs/ once the recipe names it


def _open_logs(out_dir: str | os.PathLike) -> None:
    """Send the driver's log to `<out_dir>/logs/driver.log` (appended: a resumed run
    adds its own block) and remember the folder for the Ray session's logs at the end."""
    from raydistill.console import log_to_file

    logs = Path(out_dir) / "logs"
    log_to_file(logs / "driver.log")
    _LOGS_DIR[:] = [logs]
    log.debug("=== raydistill %s (pid %d)", " ".join(sys.argv[1:]), os.getpid())


def _config(args):
    from raydistill.config import load_config

    return load_config(args.recipe, args.overrides)


def _method(cfg):
    """The recipe's method module, its checks run before any work starts (and before
    the run folder's logs/ is created: a rejected recipe leaves nothing behind)."""
    from raydistill.methods import get_method

    method = get_method(cfg.method.name)
    method.validate(cfg)
    _open_logs(cfg.out_dir)
    return method


def cmd_run(args) -> int:
    cfg = _config(args)
    report = _method(cfg).run(cfg)
    print((__import__("pathlib").Path(cfg.out_dir) / "report.md").read_text())
    plots = ", ".join(report.get("plots") or ["accuracy_vs_k.png"])
    print(f"[raydistill] report written to {cfg.out_dir}/report.md, report.json, {plots}")
    return 0 if report["results"] else 1


def cmd_train(args) -> int:
    from raydistill.cluster.report import write_report

    cfg = _config(args)
    method = _method(cfg)
    results = method.train(cfg)
    write_report(
        cfg.out_dir, cfg=cfg, results=results, baselines=getattr(method, "BASELINES", None)
    )
    print(
        json.dumps([{k: r[k] for k in ("job", "accuracy", "fidelity")} for r in results], indent=1)
    )
    return 0


def cmd_generate(args) -> int:
    from raydistill.cluster.runtime import ensure_ray
    from raydistill.timing import Stopwatch

    cfg = _config(args)
    method = _method(cfg)
    ensure_ray(cfg.cluster)
    prep = method.prepare(cfg, Stopwatch())
    print(json.dumps(prep.gen_stats, indent=2))
    print(f"[raydistill] counterfactuals in {cfg.out_dir}/counterfactuals.parquet")
    return 0


def cmd_train_teacher(args) -> int:
    from pathlib import Path

    from raydistill.cluster.runtime import ensure_ray
    from raydistill.methods.stages import subset as _subset
    from raydistill.pipelines.datasets import load_split
    from raydistill.pipelines.tasks import spec_for
    from raydistill.training.teacher import ensure_teacher

    cfg = _config(args)
    _open_logs(cfg.out_dir)
    ensure_ray(cfg.cluster)
    spec = spec_for(cfg.data)
    train = _subset(load_split(cfg.data, "train"), cfg.data.teacher_train_rows, cfg.teacher.seed)
    dev = _subset(load_split(cfg.data, "dev"), cfg.data.dev_rows, 1)
    path, info = ensure_teacher(
        cfg.data,
        cfg.teacher,
        spec,
        train,
        dev,
        cfg.resolved_cache_dir(),
        storage_path=str((Path(cfg.out_dir) / "ray_train").resolve()),
    )
    print(json.dumps({"teacher": path, **info}, indent=2))
    return 0


def cmd_report(args) -> int:
    from raydistill.cluster.report import write_report

    if Path(args.out_dir).is_dir():  # a mistyped folder is reported, not created
        _open_logs(args.out_dir)
    write_report(args.out_dir)
    with open(os.path.join(args.out_dir, "report.md")) as f:
        print(f.read())
    return 0


def cmd_sweep(args) -> int:
    from raydistill.cluster.runtime import ensure_ray
    from raydistill.training.tune import sweep

    cfg = _config(args)
    method = _method(cfg)
    sweep(
        cfg,
        recipe_path=args.recipe,
        prepare=method.prepare,
        train=method.train,
        arms=getattr(method, "ARMS", None),
        ensure_ray=ensure_ray,
    )
    return 0


def cmd_methods(args) -> int:
    from raydistill.methods import describe

    for name, text in describe().items():
        print(f"{name:10s} {text}")
    return 0


def cmd_serve(args) -> int:
    from raydistill.serving.student_app import serve_students

    models = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        if not path:
            name, path = os.path.basename(os.path.normpath(spec)), spec
        models[name] = path
    serve_students(
        models,
        teacher=args.teacher,
        shadow_fraction=args.shadow_fraction,
        api_key=args.api_key or os.environ.get("RAYDISTILL_API_KEY"),
        host=args.host,
        port=args.port,
        blocking=True,
        num_gpus_per_replica=args.num_gpus,
        num_cpus_per_replica=args.num_cpus,
        min_replicas=args.replicas,
        max_replicas=max(args.replicas, args.max_replicas or args.replicas),
    )
    return 0


def cmd_rate_kit(args) -> int:
    from raydistill.cluster.rate_kit import items_from_explain_run, make_kit, read_items

    if bool(args.items) == bool(args.run):
        raise SystemExit("raydistill: error: give exactly one of --items FILE or --run DIR")
    if args.items:
        items = read_items(args.items, kit=args.kit)
    else:
        from raydistill.config import load_config
        from raydistill.pipelines.datasets import load_split

        cfg = load_config(Path(args.run) / "config.yaml")
        rows = load_split(cfg.data, "train")
        items = items_from_explain_run(args.run, rows, kit=args.kit)
    key = make_kit(
        items,
        args.out,
        kit=args.kit,
        raters=args.raters,
        per_rater=args.per_rater,
        raters_per_item=args.raters_per_item,
        seed=args.seed,
    )
    systems = sorted({v["system"] for v in key["items"].values()})
    print(
        f"[raydistill] rating kit {args.kit!r}: {args.raters} pages × {args.per_rater} items "
        f"({len(key['items'])} distinct; systems {', '.join(systems)}) in {args.out}; "
        "send rater_<i>.html, keep key.json"
    )
    return 0


def cmd_rate_import(args) -> int:
    from raydistill.cluster.rate_kit import import_ratings, render_table

    result = import_ratings(args.kit_dir, args.files)
    out = Path(args.kit_dir)
    (out / "ratings.json").write_text(json.dumps(result, indent=1))
    (out / "ratings.md").write_text(render_table(result))
    print(render_table(result))
    return 0 if result["ratings"] else 1


VERBOSE_HELP = (
    "show library INFO lines and Ray workers' output on the console "
    "(also RAYDISTILL_VERBOSE=1); they always go to <out_dir>/logs/"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raydistill", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    def recipe_cmd(name: str, fn, help_: str):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("recipe", help="YAML recipe (see recipes/)")
        sp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. student.alpha=0.5")
        sp.set_defaults(fn=fn)
        return sp

    recipe_cmd("run", cmd_run, "the recipe's method end to end: prepare → … → report")
    mp = sub.add_parser("methods", help="list the distillation methods a recipe can name")
    mp.set_defaults(fn=cmd_methods)
    recipe_cmd(
        "generate", cmd_generate, "train/load the teacher and generate verified counterfactuals"
    )
    recipe_cmd(
        "train-teacher", cmd_train_teacher, "train (or fetch from cache) the teacher classifier"
    )
    recipe_cmd("train", cmd_train, "distill students (reuses cached teacher and counterfactuals)")
    recipe_cmd("sweep", cmd_sweep, "Ray Tune sweep over the recipe's search space")
    rp = sub.add_parser("report", help="re-render report.md/json/png from a run folder")
    rp.add_argument("out_dir")
    rp.set_defaults(fn=cmd_report)
    sp = sub.add_parser("serve", help="serve student checkpoints with Ray Serve")
    sp.add_argument("model", nargs="+", help="NAME=PATH or PATH of an HF checkpoint folder")
    sp.add_argument("--teacher", help="teacher checkpoint for shadow scoring")
    sp.add_argument("--shadow-fraction", type=float, default=0.0)
    sp.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (or $RAYDISTILL_API_KEY)"
    )
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per replica (the model runs on it)"
    )
    sp.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    sp.add_argument("--replicas", type=int, default=1, help="replicas at start (min)")
    sp.add_argument("--max-replicas", type=int, help="autoscale up to this many")
    sp.set_defaults(fn=cmd_serve)
    kp = sub.add_parser("rate-kit", help="blind human-rating pages for explanations")
    kp.add_argument("--items", help="JSONL: question, choices, answer, explanation, system")
    kp.add_argument("--run", help="an explain run folder (human, teacher original/revised)")
    kp.add_argument("--out", required=True, help="folder for rater_<i>.html, items.csv, key.json")
    kp.add_argument("--kit", default="kit", help="kit name (checked on import)")
    kp.add_argument("--raters", type=int, default=4)
    kp.add_argument("--per-rater", type=int, default=12)
    kp.add_argument("--raters-per-item", type=int, default=2)
    kp.add_argument("--seed", type=int, default=0)
    kp.set_defaults(fn=cmd_rate_kit)
    ip = sub.add_parser("rate-import", help="returned rating files → table (ratings.md/json)")
    ip.add_argument("kit_dir", help="the folder rate-kit wrote (with key.json)")
    ip.add_argument("files", nargs="+", help="ratings_*.json / .csv from the raters")
    ip.set_defaults(fn=cmd_rate_import)
    for sp in sub.choices.values():
        # `--verbose` after the command too (`raydistill run recipe.yaml --verbose`, as
        # `ray job submit -- raydistill ...` users type it); SUPPRESS: when absent, the
        # global flag's value stands.
        sp.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return p


def verbose_wanted(args: argparse.Namespace) -> bool:
    """`--verbose` on the command line, else `$RAYDISTILL_VERBOSE`."""
    from raydistill.console import VERBOSE_ENV

    env = os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return bool(getattr(args, "verbose", False)) or env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from raydistill.console import setup_console
    from raydistill.progress import console

    setup_console(verbose_wanted(args))
    console().remote_counters = True  # this process is the driver: follow the workers
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from raydistill.cluster.rate_kit import KitError
    from raydistill.config import ConfigError
    from raydistill.pipelines.datasets import DataError
    from raydistill.pipelines.kshot import KShotError
    from raydistill.pipelines.tasks import UnknownTaskError
    from raydistill.registry import UnknownModelError

    try:
        return args.fn(args)
    except (
        ConfigError,
        DataError,
        KShotError,
        UnknownTaskError,
        UnknownModelError,
        KitError,
    ) as e:
        print(f"raydistill: error: {e}", file=sys.stderr)
        return 2
    except Exception:
        # In full on the console, whatever the verbosity: a Ray Train failure's message
        # carries the failed worker's traceback, and the workers' own output is not echoed.
        log.error("raydistill %s failed", args.command, exc_info=True)
        if _LOGS_DIR:
            log.error("full logs: %s", _LOGS_DIR[0])
        return 1
    finally:
        _finish_logs()


def _finish_logs() -> None:
    """The Ray session's logs (a pointer, and a copy for a local cluster) next to the
    driver's log, at the end of a command and on failure."""
    if not _LOGS_DIR or "ray" not in sys.modules:
        return
    from raydistill.cluster.runtime import save_session_logs

    save_session_logs(_LOGS_DIR[0])


if __name__ == "__main__":
    sys.exit(main())
