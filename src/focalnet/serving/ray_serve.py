"""The same server on Ray Serve, for more than one machine: each replica loads the model and serves
the app of `create_app` (the same routes and answers); Ray's `@serve.batch` forms the batches and
Ray spreads requests over the replicas, with its own autoscaling and back-pressure.

    serve.run(ray_deployment("runs/demo/model", num_replicas=2))     # Python
    serve run focalnet.serving.ray_serve:app model=runs/demo/model         # Ray's CLI
    focalnet serve runs/demo/model --ray --replicas 2                # ours
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .app import build_app
from .batching import BatchFailed
from .options import ServeOptions
from .services import Prepared, forward_grouped, load_service, model_name


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise ImportError("Ray Serve deployments need Ray: pip install 'focalnet[ray]'") from None
    return serve


class RayRunner:
    """Batches through a replica's `@serve.batch` method; other model work on the replica's model thread."""

    depth = 0  # Ray keeps the queue (and answers 503 past max_queued_requests)

    def __init__(self, batched: Callable[[Prepared], Any], executor: ThreadPoolExecutor) -> None:
        self.batched, self.executor = batched, executor

    async def submit(self, items: list[tuple[Any, Prepared]]) -> list[Any]:
        return list(await asyncio.gather(*(self.batched(item) for _, item in items)))

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)


def ray_deployment(
    source: Any,
    *,
    onnx: str | os.PathLike | None = None,
    num_replicas: int | str | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
    **options: Any,
) -> Any:
    """A bound Ray Serve application serving `source` (or `onnx=`) on `num_replicas` replicas (or as
    `autoscaling_config` says); `options` are `ServeOptions` fields, `max_batch_size` and
    `max_wait_ms` becoming `@serve.batch`'s. Pass it to `serve.run`."""
    serve = _serve()
    settings = ServeOptions(**options)
    name = settings.model_name or model_name(onnx or source)

    @serve.ingress()
    class FocalNetDeployment:
        def __init__(self) -> None:
            self.service = load_service(source, settings, onnx)
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="focalnet-model")

        @serve.batch(max_batch_size=settings.max_batch_size, batch_wait_timeout_s=settings.max_wait_ms / 1000)
        async def forward(self, items: list[Prepared]) -> list[Any]:
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self.executor, forward_grouped, self.service, items)
            except Exception as error:
                raise BatchFailed(f"{type(error).__name__}: {error}") from None

        def __serve_build_asgi_app__(self) -> Any:
            return build_app(
                lambda: self.service, settings, name, lambda service, metrics: RayRunner(self.forward, self.executor)
            )

    # Ray's default of 5 requests per replica would cap every batch at 5
    max_ongoing_requests = max_ongoing_requests or max(5, 2 * settings.max_batch_size)
    deployment_options: dict[str, Any] = {"name": "focalnet"}
    for key, value in {
        "num_replicas": num_replicas,
        "autoscaling_config": autoscaling_config,
        "ray_actor_options": ray_actor_options,
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
    }.items():
        if value is not None:
            deployment_options[key] = value
    return serve.deployment(FocalNetDeployment).options(**deployment_options).bind()


def app(args: dict[str, str]) -> Any:
    """Ray's application builder (`serve run focalnet.serving.ray_serve:app model=DIR [num_replicas=2] ...`):
    `model` (or `onnx`), `num_replicas`, and any `ServeOptions` field, as strings."""
    args = dict(args)
    source, onnx = args.pop("model", None), args.pop("onnx", None)
    if source is None and onnx is None:
        raise ValueError("give model=<checkpoint> or onnx=<file>")
    replicas = args.pop("num_replicas", None)
    fields = {field: kind for field, kind in ServeOptions.__annotations__.items()}
    options: dict[str, Any] = {}
    for key, text in args.items():
        if key not in fields:
            raise ValueError(f"unknown argument {key!r}; use model, onnx, num_replicas or a ServeOptions field")
        options[key] = _parse(text, fields[key])
    return ray_deployment(source, onnx=onnx, num_replicas=int(replicas) if replicas else None, **options)


def _parse(text: str, annotation: str) -> Any:
    """A `serve run` argument (a string) as the ServeOptions field's type."""
    if annotation.startswith("int"):
        return int(text)
    if annotation.startswith("float"):
        return float(text)
    if annotation.startswith("bool"):
        return text.lower() in ("1", "true", "yes")
    if annotation.startswith("list"):
        return [part for part in text.split(",") if part]
    return text


def run(source: Any, host: str = "127.0.0.1", port: int = 8000, address: str | None = None, **kwargs: Any) -> int:
    """`focalnet serve --ray`: start (or join, with `address`) Ray, deploy, serve until SIGTERM/Ctrl-C."""
    import signal
    import threading

    import ray

    serve = _serve()
    ray.init(address=address, ignore_reinit_error=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(ray_deployment(source, **kwargs), name="focalnet", route_prefix="/")
        print(f"focalnet serve: on Ray Serve at http://{host}:{port} (Ctrl-C to stop)", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
