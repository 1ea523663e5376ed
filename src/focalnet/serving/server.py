"""Running the app: uvicorn with a graceful drain, in one process or several (`--workers`).

On SIGTERM (or Ctrl-C) a worker drains: readiness turns 503, new requests are refused with 503,
every request already accepted is answered, then it shuts down and exits 0. A second signal stops
at once. With several workers the parent passes the signal on and exits 0 once all have; the
workers share the CPU cores (unless OMP_NUM_THREADS says otherwise) and one set of metrics.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from .app import ServerState, create_app
from .metrics import MULTIPROCESS_DIR

logger = logging.getLogger("focalnet.serving")


def _uvicorn():
    try:
        import uvicorn
    except ImportError:
        raise ImportError("serving needs uvicorn and FastAPI: pip install 'focalnet[serve]'") from None
    return uvicorn


def draining_server(config: Any, state: ServerState, drain_timeout_s: float, supervised: bool = False) -> Any:
    """A `uvicorn.Server` that drains on the first SIGTERM/SIGINT instead of closing its socket, and
    exits with status 1 when the model fails to load. A `supervised` worker leaves Ctrl-C to its
    parent, which passes it on as SIGTERM (the terminal sends SIGINT to every process)."""
    uvicorn = _uvicorn()

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None
        exit_code = 0

        def handle_exit(self, sig: int, frame: Any) -> None:
            if supervised and sig == signal.SIGINT:
                return
            if self.drain_started is None:
                logger.info("focalnet serve: draining (%d requests in flight)", state.inflight)
                state.draining = True
                self.drain_started = time.monotonic()
            else:  # a second signal: stop now
                self.should_exit = self.force_exit = True

        async def on_tick(self, counter: int) -> bool:
            if state.failure is not None:
                self.exit_code = 1
                return True
            if self.drain_started is not None:
                drained = state.inflight == 0
                if drained or time.monotonic() - self.drain_started > drain_timeout_s:
                    return True
            return await super().on_tick(counter)

    return DrainingServer(config)


def serve(
    source: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
    **options: Any,
) -> int:
    """Serve `source` (see `create_app`; `onnx=` too) until SIGTERM; returns the exit status."""
    if workers == 1:
        return _run_worker(source, host, port, log_level, None, None, options)
    listener = socket.create_server((host, port))
    context = multiprocessing.get_context("spawn")
    arguments = (source, host, port, log_level, listener, _threads_per_worker(workers), options)
    with _shared_metrics_folder():
        processes = [context.Process(target=_worker_main, args=arguments) for _ in range(workers)]
        for process in processes:
            process.start()

        def forward(sig: int, frame: Any) -> None:
            for process in processes:
                if process.is_alive():
                    process.terminate()  # SIGTERM: each worker drains; a second one stops it

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for process in processes:
                process.join()
                _forget_metrics_gauges(process.pid)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            listener.close()
    return max(process.exitcode or 0 for process in processes)


def _threads_per_worker(workers: int) -> int | None:
    """The CPU cores split between the workers, so that N models do not each start a thread per core;
    None (torch's default) where OMP_NUM_THREADS sets it."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    return max(1, torch.get_num_threads() // workers)


def _forget_metrics_gauges(pid: int) -> None:
    """A worker that has exited stops counting in the gauges of live processes (queue depth, in flight, loaded)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


@contextlib.contextmanager
def _shared_metrics_folder() -> Iterator[None]:
    """A temporary PROMETHEUS_MULTIPROC_DIR for the workers (they inherit it), unless one is set already."""
    if os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="focalnet-metrics-") as folder:
        os.environ[MULTIPROCESS_DIR] = folder
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


def _worker_main(*arguments: Any) -> None:
    raise SystemExit(_run_worker(*arguments))


def _run_worker(
    source: Any, host: str, port: int, log_level: str, listener: Any, threads: int | None, options: dict
) -> int:
    """One server process; `listener` is the parent's socket when there are several, `threads` its share
    of the cores."""
    uvicorn = _uvicorn()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if not logger.handlers:  # our lines (ready, draining, load failures) beside uvicorn's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(log_level.upper())
    app = create_app(source, **options)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    # a request waits at most timeout_s for the model, then runs one batch: twice that is ample
    drain_timeout_s = 2 * app.state.settings.timeout_s + 10
    server = draining_server(config, app.state.serving, drain_timeout_s, supervised=listener is not None)
    server.run(sockets=[listener] if listener is not None else None)
    return server.exit_code
