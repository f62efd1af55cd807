"""``tallow serve``: an OpenAI-compatible HTTP server for one model.

Install with ``pip install "tallow[server]"``. The app is plain ASGI (Starlette), so it also runs
under any ASGI server or mounts inside another app:

>>> from tallow.server import create_app                 # doctest: +SKIP
>>> app = create_app(tallow.Model("smollm2-135m"), api_key="secret")  # doctest: +SKIP
"""

from __future__ import annotations

from .app import DEFAULT_MAX_BODY_BYTES, create_app

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "serve"]


def serve(
    app: object,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Runs ``app`` with uvicorn until interrupted (Ctrl-C, SIGTERM). Requests still running
    then get 5 seconds to finish before they are cancelled."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)  # type: ignore[arg-type]
