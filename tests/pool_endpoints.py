"""A chat message, an endpoint nobody answers and a free Serve port, shared by the
teacher-pool and pool-fault tests (test_teacher_pool_*.py, test_llm_stage_parsing.py,
test_faults_pool_replica.py).

    from pool_endpoints import USER, dead_endpoint, free_port   # tests/ is on sys.path

`dead_endpoint()` points at a port that was free a moment ago and is closed again, so a
request to it is refused at once: the tests see an unreachable pool fail fast and
clearly without waiting on a timeout, and without any server of their own.
"""

from __future__ import annotations

import socket

from raydistill.serving.teacher_pool import Endpoint

USER = [{"role": "user", "content": "Rewrite: the film was great."}]


def dead_endpoint() -> Endpoint:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    return Endpoint(f"http://127.0.0.1:{port}/v1", "teacher", {})


def free_port(lo: int = 8100, hi: int = 8200) -> int:
    """A free port in 8100-8199 for a test's Serve HTTP proxy (colleagues' Serve
    instances use other ports)."""
    for port in range(lo, hi):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi - 1}")
