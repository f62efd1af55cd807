"""The OpenAI-compatible HTTP API over one loaded model, as a Starlette (ASGI) app.

Every request is one engine request: concurrent requests are batched by the engine, not
serialized. A client that disconnects cancels its generation at once, streaming or not (the
app watches the connection while the engine works). User input never gives a 500: bad fields
are 400s naming the field, a full engine is a 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import (
    ContextOverflowError,
    ModelClosedError,
    OverloadedError,
    TemplateError,
)
from ..openai_completions import (
    InvalidRequestError,
    achat_completion,
    achat_completion_chunks,
    acompletion,
    acompletion_chunks,
    parse_chat,
    parse_completion,
)
from ..openai_types import ErrorResponse, ModelList
from .metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

log = logging.getLogger("tallow.server")

#: Largest request body read; past it, 400 without reading further.
DEFAULT_MAX_BODY_BYTES = 16 << 20
#: Seconds a client told "429" should wait before retrying.
RETRY_AFTER = 1


class HTTPError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(
        self, status: int, message: str, *, type: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> ErrorResponse:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER)} if self.status == 429 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> HTTPError:
    return HTTPError(400, message, type="invalid_request_error", param=param, code=code)


_PARAM = re.compile(r"invalid value for '([^']+)'")


def _as_http_error(e: BaseException, prompt_param: str) -> HTTPError:
    """What a failed generation request answers."""
    if isinstance(e, HTTPError):
        return e
    if isinstance(e, InvalidRequestError):
        return _invalid(str(e), e.param)
    if isinstance(e, OverloadedError):
        return HTTPError(429, str(e), type="server_overloaded", code="overloaded")
    if isinstance(e, ContextOverflowError):
        return _invalid(str(e), prompt_param, "context_length_exceeded")
    if isinstance(e, TemplateError):
        return _invalid(f"the model's chat template cannot render this conversation: {e}", "messages")
    if isinstance(e, ModelClosedError):
        return HTTPError(503, "the model is shutting down", type="server_error")
    if isinstance(e, (ValueError, TypeError)):
        # The engine's checks name the parameter: "invalid value for 'top_p': ...".
        m = _PARAM.search(str(e))
        return _invalid(str(e), m.group(1) if m else None)
    log.exception("request failed", exc_info=e)
    return HTTPError(500, "internal error", type="server_error")


async def _disconnected(receive: Receive) -> None:
    """Returns when the client disconnects (the body has been read: nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _EventStream(Response):
    """A server-sent-events response: one ``data:`` event per chunk, then ``data: [DONE]``.
    The client's disconnect cancels the generation (and the engine request) at once."""

    def __init__(self, chunks: AsyncIterator[Any], on_end: Callable[[bool, float | None], None]) -> None:
        # Sent by `__call__` itself; Response's own body machinery is not used.
        self.status_code = 200
        self.background = None
        self.chunks = chunks
        self.on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        began = time.monotonic()
        first: float | None = None

        async def pump() -> None:
            nonlocal first
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            try:
                async for chunk in self.chunks:
                    if first is None and chunk.get("choices") and _has_text(chunk["choices"][0]):
                        first = time.monotonic() - began
                    await send({"type": "http.response.body", "body": _event(chunk), "more_body": True})
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
            except (OSError, asyncio.CancelledError):
                raise
            except Exception as e:  # after the headers: the error goes in the stream
                body = _as_http_error(e, "prompt").body()
                await send({"type": "http.response.body", "body": _event(body), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        gone = await _race(pump(), _disconnected(receive))
        if gone:
            await _close(self.chunks)
        self.on_end(gone, first)


def _has_text(choice: dict[str, Any]) -> bool:
    return bool(choice.get("text") or choice.get("delta", {}).get("content"))


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _close(chunks: AsyncIterator[Any]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _race(work: Coroutine[Any, Any, None], disconnect: Coroutine[Any, Any, None]) -> bool:
    """Runs ``work`` until it ends or the client disconnects (then ``work`` is cancelled).
    True when the client went away first. A send to a closed connection counts as gone."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnect)
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    try:
        await task
    except asyncio.CancelledError:
        return True
    except OSError:
        return True
    return False


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in OpenAI's shape."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "internal error"
    kind = "invalid_request_error" if status < 500 else "server_error"
    return HTTPError(status, f"{request.method} {request.url.path}: {detail}", type=kind).response()


def create_app(
    model: Model,
    *,
    model_id: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The OpenAI-compatible API over ``model``, named ``model_id`` (default: the file's
    name without ``.gguf``). With ``api_key``, ``/v1/`` routes need
    ``Authorization: Bearer <api_key>``; ``/health`` and ``/metrics`` stay open.

    >>> app = create_app(tallow.Model("smollm2-135m"))      # doctest: +SKIP
    >>> uvicorn.run(app, port=8000)                          # doctest: +SKIP
    """
    name = model_id or model.path.name.removesuffix(".gguf")
    created = int(time.time())
    metrics = Metrics(model)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPError(401, "missing or wrong API key", type="authentication_error", code="invalid_key")

    async def read_json(request: Request) -> Any:
        too_large = _invalid(f"the request body is larger than {max_body_bytes} bytes", code="too_large")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise too_large
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > max_body_bytes:
                raise too_large
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:
            raise _invalid(f"the request body is not valid JSON: {e}") from None

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise HTTPError(
                404,
                f"the model '{requested}' does not exist; this server runs '{name}'",
                type="invalid_request_error",
                param="model",
                code="model_not_found",
            )

    def endpoint(
        path: str,
        run: Callable[[Request], Awaitable[Response]],
        prompt_param: str = "prompt",
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            began = time.monotonic()
            try:
                authorize(request)
                result = await run(request)
            except Exception as e:
                err = _as_http_error(e, prompt_param)
                metrics.requests.labels(path, str(err.status)).inc()
                return err.response()
            if isinstance(result, _EventStream):
                return result  # counted when it ends
            metrics.requests.labels(path, str(result.status_code)).inc()
            if path.endswith("completions") and result.status_code == 200:
                metrics.duration.labels(path).observe(time.monotonic() - began)
            return result

        return handle

    def generation(
        path: str, parse: Callable[..., Any], whole: Callable[..., Any], chunks: Callable[..., Any]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A generation route: ``parse`` checks the body, then ``whole`` answers it at once or
        ``chunks`` as server-sent events; the client's disconnect cancels either."""

        async def run(request: Request) -> Response:
            req = parse(await read_json(request), model)
            check_model(req.model)
            began = time.monotonic()
            if req.stream:

                def on_end(gone: bool, first: float | None) -> None:
                    if gone:
                        metrics.disconnects.labels(path).inc()
                        metrics.requests.labels(path, "499").inc()
                        return
                    metrics.requests.labels(path, "200").inc()
                    metrics.duration.labels(path).observe(time.monotonic() - began)
                    if first is not None:
                        metrics.first_token.labels(path).observe(first)

                return _EventStream(await chunks(model, req, name), on_end)
            result: list[Any] = []

            async def work() -> None:
                result.append(await whole(model, req, name))

            if await _race(work(), _disconnected(request.receive)):
                metrics.disconnects.labels(path).inc()
                # Nobody reads it; 499 is what nginx logs for a client that closed the request.
                return Response(status_code=499)
            return JSONResponse(result[0])

        return run

    def card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "tallow"}

    async def models(request: Request) -> Response:
        body: ModelList = {"object": "list", "data": [card()]}  # type: ignore[list-item]
        return JSONResponse(body)

    async def model_card(request: Request) -> Response:
        check_model(request.path_params["model"])
        return JSONResponse(card())

    async def health(request: Request) -> Response:
        s = model.stats()
        return JSONResponse({"status": "ok", "model": name, "active": s.active, "queued": s.queued})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    routes = [
        Route("/v1/models", endpoint("/v1/models", models), methods=["GET"]),
        Route("/v1/models/{model:path}", endpoint("/v1/models", model_card), methods=["GET"]),
        Route(
            "/v1/completions",
            endpoint(
                "/v1/completions",
                generation("/v1/completions", parse_completion, acompletion, acompletion_chunks),
            ),
            methods=["POST"],
        ),
        Route(
            "/v1/chat/completions",
            endpoint(
                "/v1/chat/completions",
                generation("/v1/chat/completions", parse_chat, achat_completion, achat_completion_chunks),
                "messages",
            ),
            methods=["POST"],
        ),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={StarletteHTTPException: _http_exception})
    app.state.model = model
    app.state.model_id = name
    app.state.metrics = metrics
    return app
