"""The driver's console and log file: quiet by default, everything in `out_dir/logs/`.

Quiet (the default): the console shows the stage progress lines (`progress.py`),
raydistill's own INFO lines, and WARNING and above from anyone; library INFO (Ray,
Ray Data, Serve, DeepSpeed, transformers) goes only to the log file, and Ray's workers'
output stays in the Ray session's logs (`ray.init(log_to_driver=False)`,
`cluster/runtime.py`). Verbose (`--verbose` or `RAYDISTILL_VERBOSE=1`): every INFO line
on the console and the workers' output echoed, as before.

Ray, Ray Data and Serve install their own console handlers on loggers that do not
propagate, and do it when they are imported (Ray Data again on every `import ray.data`
configuration), so `quiet_libraries` is idempotent and called again after those imports
(`ensure_ray`, the generator stage): it lowers nothing in the libraries' loggers, only
raises their *console* handlers to WARNING and adds the run's log file to them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

VERBOSE_ENV = "RAYDISTILL_VERBOSE"
_OURS = "_raydistill_handler"  # marks the handlers this module added
_state: dict[str, object] = {"verbose": None, "file": None, "console": None}


def is_verbose() -> bool:
    """The CLI's `--verbose` (set through `set_verbose`), else `$RAYDISTILL_VERBOSE`."""
    if _state["verbose"] is not None:
        return bool(_state["verbose"])
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def set_verbose(verbose: bool | None) -> None:
    _state["verbose"] = verbose


def _ours(name: str) -> bool:
    return name == "raydistill" or name.startswith("raydistill.") or name == "__main__"


class ConsoleFilter(logging.Filter):
    """WARNING and above from anyone; INFO only from raydistill unless verbose."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if record.levelno < logging.INFO:
            return False
        return self.verbose or _ours(record.name)


class FileFilter(logging.Filter):
    """raydistill at every level; libraries from INFO (their DEBUG is megabytes of noise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _ours(record.name) or record.levelno >= logging.INFO


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO and _ours(record.name):
            text = "[raydistill] " + record.getMessage()
        else:
            text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class ConsoleHandler(logging.Handler):
    """Writes through the progress reporter, so a log line never cuts a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from raydistill.progress import console

            console().write(self.format(record))
        except Exception:
            self.handleError(record)


def setup_console(verbose: bool) -> logging.Handler:
    """Route the driver's logging: a console handler (filtered as above) on the root
    logger, raydistill at DEBUG for the log file, library consoles quieted. Replaces
    what an earlier call installed."""
    set_verbose(verbose)
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(h)
    handler = ConsoleHandler()
    handler.addFilter(ConsoleFilter(verbose))
    handler.setFormatter(_ConsoleFormatter())
    setattr(handler, _OURS, True)
    _state["console"] = handler
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    logging.getLogger("raydistill").setLevel(logging.DEBUG)
    if not verbose:
        # Download/map bars of the HF libraries on the driver: the stage lines replace them.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    quiet_libraries()
    return handler


def log_to_file(path: str | Path) -> Path:
    """Append every record (see `FileFilter`) to `path`, libraries' included; one per
    process (a second call moves it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _state["file"]
    if isinstance(old, logging.Handler):
        for lg in _loggers():
            lg.removeHandler(old)
        old.close()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(FileFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    setattr(handler, _OURS, True)
    _state["file"] = handler
    logging.getLogger().addHandler(handler)
    quiet_libraries()
    return path


def log_file() -> Path | None:
    h = _state["file"]
    return Path(h.baseFilename) if isinstance(h, logging.FileHandler) else None


def close_log_file() -> None:
    h = _state["file"]
    if isinstance(h, logging.Handler):
        for lg in _loggers():
            lg.removeHandler(h)
        h.close()
    _state["file"] = None


def _loggers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    for lg in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(lg, logging.Logger):
            found.append(lg)
    return found


def reclaim_root() -> None:
    """Put this module's handlers back on the root logger if a library replaced them.

    Importing Ray Serve LLM (`ray.serve.llm`, once per process) sets
    `root.handlers = [a JSON StreamHandler]`: without this every record that reaches
    the root, raydistill's DEBUG lines and httpx's per-request INFO included, is printed
    as raw JSON on the console, and the run's log file receives nothing from the root
    after the first pool start. The library's console handler goes (ours replace it);
    file handlers anyone added stay. A no-op until `setup_console` / `log_to_file` ran.
    """
    root = logging.getLogger()
    ours = [h for h in (_state["console"], _state["file"]) if isinstance(h, logging.Handler)]
    missing = [h for h in ours if h not in root.handlers]
    if not missing:
        return
    for h in list(root.handlers):
        if type(h) is logging.StreamHandler and not getattr(h, _OURS, False):
            root.removeHandler(h)
    for h in missing:
        root.addHandler(h)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


def quiet_libraries() -> None:
    """For every library logger that keeps its records to itself (`propagate=False`,
    e.g. "ray", "ray.data", "ray.serve", "DeepSpeed", "transformers"): add the log file,
    and unless verbose raise its console handlers to WARNING. Idempotent. First puts
    back the root handlers a library took away (`reclaim_root`)."""
    reclaim_root()
    verbose = is_verbose()
    file_handler = _state["file"]
    for lg in _loggers():
        # A logger with no handlers of its own and no propagation was silenced on purpose.
        if lg.propagate or not lg.handlers or lg is logging.getLogger() or _ours(lg.name):
            continue
        if not verbose:
            for h in lg.handlers:
                # Console handlers only: file handlers (Ray's session logs) keep everything.
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    h.setLevel(max(h.level, logging.WARNING))
        if isinstance(file_handler, logging.Handler) and file_handler not in lg.handlers:
            lg.addHandler(file_handler)
