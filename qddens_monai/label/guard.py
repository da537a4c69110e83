"""The HTTP side of the label server: who may call it, from where, and what errors look like.

:func:`secure_app` takes MONAI Label's FastAPI app (``monailabel.app.app``) before it serves its first
request and changes only its middleware and error handlers, not its endpoints:

- **CORS**: MONAI Label echoes any ``Origin`` with ``allow-credentials``; that middleware is removed.
  Without ``origins`` no cross-origin access is allowed at all, and a request that carries a foreign
  ``Origin`` header (a web page in the annotator's browser) is refused (403) before it runs, which
  also stops "simple" cross-origin POSTs that need no preflight. ``origins`` is an explicit
  allow-list (no credentials; the token travels in a header).
- **Token**: with ``token`` set, every request must send ``Authorization: Bearer <token>``
  (``MONAILabelClient.update_auth({"token_type": "Bearer", "access_token": token})``), else 401.
- **Names**: ``/infer/<model>``, ``/train/<model>``, ``/activelearning/<strategy>``,
  ``/scoring/<method>``, ``/batch/infer/<model>`` and ``/model/<model>`` must name something the app
  serves (404 with the list), and the query parameters ``image``, ``id``, ``label`` (ids) and
  ``tag`` must be plain names (400, :mod:`qddens_monai.label.confine`).
- **DICOMweb proxy**: MONAI Label's ``/proxy/dicom/...`` (used by the OHIF it serves) appends the
  request path to ``--studies``; ``.`` / ``..`` segments and encoded dots, slashes and backslashes are
  refused (400), so it cannot reach the PACS's other endpoints (e.g. Orthanc's REST API).
- **Read-only bundle**: uploading or deleting model weights through ``/model/<model>`` is refused (403);
  the weights change only by training from the server.
- **Errors**: :class:`~qddens_monai.label.confine.RequestRefused` answers its status and message;
  MONAI Label's own exceptions answer 404 (unknown image / label) or 400 with their message.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware

from .confine import RequestRefused, check_image_id, check_tag

__all__ = ["secure_app", "GuardMiddleware"]

logger = logging.getLogger(__name__)

# first path segment(s) -> the app info key listing the names it may be followed by
_NAMED = {
    ("infer",): "models",
    ("train",): "trainers",
    ("activelearning",): "strategies",
    ("scoring",): "scoring",
    ("batch", "infer"): "models",
    ("model",): "models",
}
_ID_PARAMS = ("image", "id", "label")


def _refuse(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


class GuardMiddleware(BaseHTTPMiddleware):
    """Token, origin, names and ids of every request (see the module doc)."""

    def __init__(
        self, app: Any, token: Optional[str], origins: Sequence[str], served: Callable[[], dict[str, Any]]
    ) -> None:
        super().__init__(app)
        self.token = token or None
        self.origins = {o.rstrip("/") for o in origins}
        self.served = served

    def _check_names(self, request: Request) -> None:
        parts = [p for p in request.url.path.split("/") if p]
        for prefix, key in _NAMED.items():
            n = len(prefix)
            if tuple(parts[:n]) == prefix and len(parts) == n + 1 and parts[n] != "info":
                names = sorted(self.served().get(key) or {})
                if parts[n] not in names:
                    what = {
                        "models": "model",
                        "trainers": "trainer",
                        "strategies": "strategy",
                        "scoring": "scoring method",
                    }[key]
                    raise RequestRefused(404, f"no {what} {parts[n]!r} here; served: {names}")
                if prefix == ("model",) and request.method in ("PUT", "POST", "DELETE"):
                    raise RequestRefused(
                        403,
                        "the served bundle is read-only through the API: its weights "
                        "change only by training from the server",
                    )
        if parts[:1] == ["proxy"]:  # MONAI Label's DICOMweb proxy appends the path to --studies
            raw = request.scope.get("raw_path", b"").decode("latin-1").lower()
            if any(p in (".", "..") for p in parts) or any(x in raw for x in ("%2e", "%2f", "%5c", "\\")):
                raise RequestRefused(
                    400,
                    "a DICOMweb proxy path stays under the PACS's DICOMweb root: no '.' or "
                    "'..' segments, no encoded '.', '/' or '\\'",
                )
        for key in _ID_PARAMS:
            value = request.query_params.get(key)
            if value:  # an empty image with an uploaded file or a session is MONAI Label's business
                check_image_id(value, f"{key} id" if key != "id" else "image id")
        if "tag" in request.query_params:
            check_tag(request.query_params["tag"])

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") not in self.origins and origin.rstrip("/") != _own_origin(request):
            return _refuse(
                403,
                f"cross-origin request from {origin} refused: the server allows no other origins"
                " (start it with --cors-origins to allow some)",
            )
        if self.token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return _refuse(
                    401,
                    "missing or wrong token: send 'Authorization: Bearer <token>' (the server's --auth-token)",
                    {"WWW-Authenticate": "Bearer"},
                )
        try:
            self._check_names(request)
        except RequestRefused as e:
            return _refuse(e.status, e.message)
        return await call_next(request)


def _error_handlers(app: FastAPI) -> None:
    from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException, MONAILabelException

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestRefused)
        logger.warning(f"{request.method} {request.url.path}: {exc.status} {exc.message}")
        return _refuse(exc.status, exc.message)

    async def monailabel_error(request: Request, exc: Exception) -> JSONResponse:
        status = 404 if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)) else 400
        message = str(getattr(exc, "msg", exc))
        logger.warning(f"{request.method} {request.url.path}: {status} {message}")
        return _refuse(status, message)

    app.add_exception_handler(RequestRefused, refused)
    app.add_exception_handler(MONAILabelException, monailabel_error)


def secure_app(
    app: FastAPI,
    token: Optional[str] = None,
    origins: Sequence[str] = (),
    served: Optional[Callable[[], dict[str, Any]]] = None,
) -> FastAPI:
    """Apply the module doc's rules to MONAI Label's ``app`` (before it has served a request); returns it.

    Args:
        app: MONAI Label's FastAPI app.
        token: the shared token every request must send; ``None``: no token needed.
        origins: the origins allowed cross-origin access (``https://viewer.example.org``); none by default.
        served: returns the app's info (``models``, ``trainers``, ``strategies``, ``scoring``);
            default MONAI Label's app instance's ``info()``.
    """
    if app.middleware_stack is not None:
        raise RuntimeError("secure_app must run before the app serves its first request")
    for o in origins:
        parts = urlsplit(o)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"CORS origin {o!r} must be scheme://host[:port], e.g. https://viewer.example.org")
    if served is None:
        from monailabel.interfaces.utils.app import app_instance

        def served() -> dict[str, Any]:
            a = app_instance()  # the task tables themselves: info() would describe every task each call
            return {
                "models": a._infers,
                "trainers": a._trainers,
                "strategies": a._strategies,
                "scoring": a._scoring_methods,
            }

    kept = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    stack = [Middleware(GuardMiddleware, token=token, origins=list(origins), served=served)]
    if origins:  # outermost: answers preflights itself, adds the headers for allowed origins
        stack.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=[o.rstrip("/") for o in origins],
                allow_credentials=False,
                allow_methods=["GET", "POST", "PUT", "DELETE", "HEAD"],
                allow_headers=["Authorization", "Content-Type"],
            ),
        )
    app.user_middleware = stack + kept
    _error_handlers(app)
    logger.info(
        f"label server: token {'required' if token else 'not required'}; cross-origin access "
        f"{'for ' + ', '.join(origins) if origins else 'refused (MONAI Label prints *; it is not used)'}"
    )
    return app
