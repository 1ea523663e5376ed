"""`create_app`: the HTTP API of `focalnet serve` as an ASGI app (FastAPI), to run with uvicorn or
mount in a service of one's own.

Routes (the same for every task; the task decides the payload):
* `POST /predict` - transformers' pipeline JSON for one image, a list of them for several;
* `POST /visualize` - a PNG: modulators, drawn detections, segmentation overlay, reconstruction;
* `GET /model`, `GET /metrics` (Prometheus), `GET /health/live|ready`, and the Open Inference
  Protocol's `GET /v2`, `/v2/health/live|ready`, `/v2/models/{name}[/ready]`.

The model loads in the background once the server listens (readiness says 503 until it has also
run one warm-up batch). Every error is `{"error": {"code", "message"}}` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import resources
from typing import Annotated, Any, Protocol

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from PIL import Image
    from starlette.exceptions import HTTPException
except ImportError:
    raise ImportError("serving needs FastAPI, uvicorn and Pillow: pip install 'focalnet[serve]'") from None

from .. import __version__
from ..image_processing import ImageTooLargeError, decode_image
from .batching import BatchFailed, DynamicBatcher, QueueFull, QueueTimeout
from .metrics import ServingMetrics
from .options import ACCEPTED_FORMATS, RequestParams, ServeOptions, ServingError
from .schemas import ERROR_RESPONSES, ModelInfo, PredictAnswer, PredictParameters, VisualizeParameters
from .services import Prepared, Service, load_service, model_name
from .uploads import split_body

logger = logging.getLogger("focalnet.serving")

PUBLIC_PATHS = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/"})
"""Open without the API key, and answered while draining (probes must see the drain); so is
`/static/`, the page's script and style (the page asks for the key itself)."""
STATIC = "/static/"
MODEL_ROUTES = ("/predict", "/visualize")
ROUTES = (*MODEL_ROUTES, "/", "/model", "/metrics", "/v2", "/openapi.json", "/docs", *PUBLIC_PATHS)
RETRY_AFTER_S = "1"
WARM_UP_SIZE = 256

REQUEST_BODY = {
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}, "example": "<JPEG, PNG, ... bytes>"},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["image"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "inputs": {
                        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                        "description": "base64 image(s), optionally as data: URLs",
                    },
                    "parameters": {"type": "object", "description": "the query parameters, as in the query"},
                },
                "required": ["inputs"],
            }
        },
    },
}


class Runner(Protocol):
    """How batches reach the model: `DynamicBatcher` here, `serve.batch` on Ray."""

    depth: int

    async def submit(self, items: list[tuple[Any, Prepared]]) -> list[Any]: ...

    async def call(self, function: Callable[..., Any], *args: Any) -> Any: ...


class ServerState:
    """Where the server is in its life: loading, ready, draining (or failed to load); requests in flight."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.service: Service | None = None
        self.runner: Runner | None = None
        self.ready = False
        self.draining = False
        self.failure: str | None = None
        self.inflight = 0

    @property
    def status(self) -> str:
        if self.failure is not None:
            return "failed"
        if self.draining:
            return "draining"
        return "ready" if self.ready else "loading"

    def require_ready(self) -> tuple[Service, Runner]:
        if self.failure is not None:
            raise ServingError(503, "load_failed", f"the model could not be loaded: {self.failure}")
        if not self.ready:
            raise ServingError(503, "loading", "the model is still loading", {"Retry-After": "5"})
        return self.service, self.runner


def local_runner(service: Service, settings: ServeOptions, metrics: ServingMetrics) -> DynamicBatcher:
    batcher = DynamicBatcher(
        service.forward,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        timeout_s=settings.timeout_s,
        on_batch=metrics.observe_batch,
        on_queue=metrics.queue_depth.set,
    )
    batcher.start()
    return batcher


def create_app(
    model_or_source: Any, *, onnx: str | os.PathLike | None = None, preprocessing: Any = None, **options: Any
) -> FastAPI:
    """The ASGI app serving `model_or_source` (anything `focalnet predict --model` takes, or a model
    object) or, with `onnx=`, an exported classifier. `options` are `ServeOptions` fields
    (max_batch_size, max_wait_ms, max_queue, timeout_s, top_k, threshold, max_upload_mb,
    max_pixels, max_images, api_key_env, cors_origins, device, dtype, model_name, fuse)."""
    settings = ServeOptions(**options)
    name = settings.model_name or model_name(onnx or model_or_source)
    load = partial(load_service, model_or_source, settings, onnx, preprocessing)
    return build_app(load, settings, name, partial(local_runner, settings=settings))


def build_app(
    load: Callable[[], Service],
    settings: ServeOptions,
    name: str,
    make_runner: Callable[..., Runner],
) -> FastAPI:
    """The app around a service loader and a way to run batches (`make_runner(service, metrics=...)`)."""
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, not decoded
    state, metrics = ServerState(name), ServingMetrics()
    decoders = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="focalnet-decode")

    async def start() -> None:
        try:
            state.service = await asyncio.to_thread(load)
            state.runner = make_runner(state.service, metrics=metrics)
            example = Image.new("RGB", (WARM_UP_SIZE, WARM_UP_SIZE), (124, 116, 104))
            prepared = await asyncio.to_thread(state.service.prepare, example, _params(PredictParameters(), settings))
            await state.runner.submit([(prepared.key, prepared)])
        except Exception as error:  # kept for readiness and the server's exit status
            state.failure = f"{type(error).__name__}: {error}"
            logger.error("focalnet serve: the model could not be loaded: %s", state.failure)
            return
        state.ready = True
        metrics.loaded.set(1)
        logger.info("focalnet serve: %s (%s) ready", name, state.service.task)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.get_running_loop().create_task(start())
        yield
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        if isinstance(state.runner, DynamicBatcher):
            await state.runner.stop()
        decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title=f"focalnet serve: {name}",
        version=__version__,
        description="FocalNet models over HTTP: transformers' pipeline JSON, dynamic batching, health and metrics.",
        lifespan=lifespan,
    )
    app.state.serving, app.state.settings = state, settings

    # -- errors: one JSON shape ---------------------------------------------------------------
    def error_response(error: ServingError) -> JSONResponse:
        metrics.errors.labels(error.code).inc()
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, error: ServingError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in error.errors())
        return error_response(ServingError(422, "invalid_parameter", problems))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("focalnet serve: %s %s failed", request.method, request.url.path)
        return error_response(ServingError(500, "internal_error", f"{type(error).__name__}: {error}"))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(ServingError(error.status_code, code, str(error.detail), dict(error.headers or {})))

    # -- the model ----------------------------------------------------------------------------
    async def prepared_images(request: Request, query: PredictParameters) -> tuple[list[Prepared], RequestParams, bool]:
        """Decoded and prepared images of the body (in the thread pool), their parameters, and
        whether the answer is a list of answers (several images, or a JSON list)."""
        service, _ = state.require_ready()
        upload = split_body(request.headers.get("content-type", ""), await request.body())
        merged = {**query.model_dump(exclude_unset=True), **upload.parameters}
        try:
            params = _params(type(query).model_validate(merged), settings)
        except ValueError as error:
            raise ServingError(422, "invalid_parameter", str(error)) from None
        count = len(upload.images)
        if count > settings.max_images:
            message = f"{count} images sent, at most {settings.max_images} per request"
            raise ServingError(413, "too_many_images", message)
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(decoders, _prepare, service, data, params, settings) for data in upload.images]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ServingError):
                if count > 1:
                    outcome.message = f"image {index + 1} of {count}: {outcome.message}"
                raise outcome
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes, params, upload.as_list

    @app.post(
        "/predict",
        response_model=PredictAnswer,
        responses=ERROR_RESPONSES,
        openapi_extra={"requestBody": REQUEST_BODY},
        summary="transformers' pipeline answer for each image",
    )
    async def predict(request: Request, query: Annotated[PredictParameters, Query()]) -> JSONResponse:
        prepared, params, as_list = await prepared_images(request, query)
        service, runner = state.require_ready()
        outputs = await _run(runner, prepared)
        loop = asyncio.get_running_loop()  # answers encode PNGs (masks): off the event loop too
        pairs = zip(outputs, prepared, strict=True)
        jobs = [loop.run_in_executor(decoders, service.answer, output, item, params) for output, item in pairs]
        answers = await asyncio.gather(*jobs)
        metrics.images.inc(len(answers))
        return JSONResponse(answers if as_list else answers[0])

    @app.post(
        "/visualize",
        responses={200: {"content": {"image/png": {}}, "description": "A PNG"}, **ERROR_RESPONSES},
        response_class=Response,
        openapi_extra={"requestBody": REQUEST_BODY},
        summary="What the model sees or finds in one image, drawn",
    )
    async def visualize(request: Request, query: Annotated[VisualizeParameters, Query()]) -> Response:
        prepared, params, _ = await prepared_images(request, query)
        if len(prepared) != 1:
            raise ServingError(422, "one_image", f"/visualize draws one image; {len(prepared)} were sent")
        service, runner = state.require_ready()
        try:
            picture = await runner.call(service.visualize, prepared[0], params)
        except ServingError:
            raise
        except Exception as error:
            raise ServingError(500, "model_error", f"{type(error).__name__}: {error}") from None
        metrics.images.inc()
        return Response(picture, media_type="image/png")

    @app.get(
        "/model",
        response_model=ModelInfo,
        responses=ERROR_RESPONSES,
        summary="The model, its preprocessing and the server's settings",
    )
    async def describe() -> dict[str, Any]:
        service, _ = state.require_ready()
        shown = {key: value for key, value in settings.to_dict().items() if key not in ("api_key_env", "cors_origins")}
        return {"name": name, **service.describe(), "settings": shown}

    # -- health and metrics -------------------------------------------------------------------
    def readiness() -> JSONResponse:
        status = 200 if state.status == "ready" else 503
        body = {"status": state.status, **({"error": state.failure} if state.failure else {})}
        return JSONResponse(body, status_code=status, headers={} if status == 200 else {"Retry-After": RETRY_AFTER_S})

    @app.get("/health/live", summary="The process answers")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready", summary="200 once loaded and warmed; 503 while loading or draining")
    async def ready() -> JSONResponse:
        return readiness()

    @app.get("/v2/health/live", summary="Open Inference Protocol liveness")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="Open Inference Protocol readiness")
    async def v2_ready() -> JSONResponse:
        response = readiness()
        return JSONResponse({"ready": response.status_code == 200}, status_code=response.status_code)

    @app.get("/v2", summary="Open Inference Protocol server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": "focalnet", "version": __version__, "extensions": []}

    @app.get("/v2/models/{model}", responses=ERROR_RESPONSES, summary="Open Inference Protocol model metadata")
    async def v2_model(model: str) -> dict[str, Any]:
        service = _named(model, state)
        info = service.describe()
        height, width = info.get("input_size") or (-1, -1)
        return {
            "name": name,
            "versions": [__version__],
            "platform": "pytorch" if service.model is not None else "onnx",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": service.task, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"task": service.task, "input_size": [height, width], "labels": info["labels"]},
        }

    @app.get("/v2/models/{model}/ready", responses=ERROR_RESPONSES, summary="Open Inference Protocol model readiness")
    async def v2_model_ready(model: str) -> JSONResponse:
        _check_name(model, state)
        response = readiness()
        return JSONResponse({"name": name, "ready": response.status_code == 200}, status_code=response.status_code)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        metrics.queue_depth.set(state.runner.depth if state.runner is not None else 0)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    # -- the page: images in, answers shown -----------------------------------------------------
    page = resources.files(__package__) / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((page / "index.html").read_text(encoding="utf-8"))

    app.mount(STATIC, StaticFiles(directory=str(page)), name="static")

    app.add_middleware(Guard, state=state, settings=settings, metrics=metrics)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    return app


def _params(query: PredictParameters, settings: ServeOptions) -> RequestParams:
    extra = {key: getattr(query, key) for key in ("blocks", "alpha") if hasattr(query, key)}
    return RequestParams(
        top_k=query.top_k or settings.top_k,
        threshold=settings.threshold if query.threshold is None else query.threshold,
        label_map=query.label_map,
        mask_ratio=query.mask_ratio,
        seed=query.seed,
        **extra,
    )


def _prepare(service: Service, data: bytes, params: RequestParams, settings: ServeOptions) -> Prepared:
    """Decode (allow-listed formats, pixel cap from the header) and prepare one image, off the event loop."""
    try:
        image = decode_image(data, "the upload", ACCEPTED_FORMATS, settings.max_pixels)
    except ImageTooLargeError as error:
        raise ServingError(413, "too_many_pixels", str(error)) from None
    except Warning as warning:  # Pillow's DecompressionBombWarning, made an error
        raise ServingError(413, "too_many_pixels", f"the image is too large to decode safely ({warning})") from None
    except ValueError as error:
        code = "empty_body" if not data else "not_an_image"
        raise ServingError(400, code, str(error)) from None
    return service.prepare(image, params)


async def _run(runner: Runner, prepared: list[Prepared]) -> list[Any]:
    try:
        return await runner.submit([(item.key, item) for item in prepared])
    except QueueFull as error:
        raise ServingError(503, "queue_full", f"the server is busy: {error}", {"Retry-After": RETRY_AFTER_S}) from None
    except QueueTimeout as error:
        raise ServingError(504, "queue_timeout", f"timed out waiting for the model: {error}") from None
    except BatchFailed as error:
        raise ServingError(500, "model_error", f"the model failed on this request's batch: {error}") from None


def _check_name(model: str, state: ServerState) -> None:
    if model != state.name:
        raise ServingError(404, "not_found", f"no model named {model!r}; this server serves {state.name!r}")


def _named(model: str, state: ServerState) -> Service:
    _check_name(model, state)
    service, _ = state.require_ready()
    return service


def _route_label(path: str) -> str:
    """A bounded set of metric labels: the route's template, or "unmatched"."""
    if path in ROUTES:
        return path
    if path.startswith("/v2/models/"):
        return "/v2/models/{name}/ready" if path.endswith("/ready") else "/v2/models/{name}"
    if path.startswith(STATIC):
        return STATIC + "{file}"
    return "unmatched"


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(STATIC)


class Guard:
    """ASGI middleware in front of every route: the API key (constant-time), refusal while draining,
    the body limit (Content-Length, and the bytes counted as they stream in), the in-flight count
    that a drain waits for, and request metrics."""

    def __init__(self, app: Any, state: ServerState, settings: ServeOptions, metrics: ServingMetrics) -> None:
        self.app, self.state, self.settings, self.metrics = app, state, settings, metrics
        key = settings.api_key
        self.key = key.encode() if key else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, started, status = _route_label(scope["path"]), time.perf_counter(), [500]

        async def send_and_watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if _is_public(scope["path"]):
                await self.app(scope, receive, send_and_watch)
                return
            refusal = self._refusal(scope)
            if refusal is not None:
                self.metrics.errors.labels(refusal.code).inc()
                await _send_error(refusal, send_and_watch)
                return
            model_work = route in MODEL_ROUTES
            self.state.inflight += 1
            if model_work:
                self.metrics.in_flight.inc()
            try:
                await self.app(scope, self._counted(receive), send_and_watch)
            finally:
                self.state.inflight -= 1
                if model_work:
                    self.metrics.in_flight.dec()
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    def _refusal(self, scope: dict) -> ServingError | None:
        headers = dict(scope["headers"])
        if self.key is not None:
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return ServingError(
                    401,
                    "unauthorized",
                    "this server needs an API key: send the header Authorization: Bearer <key>",
                    {"WWW-Authenticate": "Bearer"},
                )
        if self.state.draining:
            return ServingError(503, "draining", "the server is shutting down", {"Retry-After": RETRY_AFTER_S})
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_upload_bytes:
            return _too_large(self.settings)
        return None

    def _counted(self, receive: Callable) -> Callable:
        """`receive` that stops the request once its body passes the limit."""
        received, limit = 0, self.settings.max_upload_bytes

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(self.settings)
            return message

        return counted


def _too_large(settings: ServeOptions) -> ServingError:
    return ServingError(
        413, "payload_too_large", f"the body is larger than the server's limit of {settings.max_upload_mb:g} MB"
    )


async def _send_error(error: ServingError, send: Callable) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    await response({"type": "http"}, _nothing, send)


async def _nothing() -> dict:
    return {"type": "http.disconnect"}
