"""The ASGI app uvicorn serves: MONAI Label's FastAPI app behind :func:`~qddens_monai.label.guard.secure_app`.

``start_label_server`` passes ``--uvicorn_app qddens_monai.label.asgi:app`` to MONAI Label and its
settings through the environment: ``QDDENS_LABEL_AUTH_TOKEN`` (the shared token; unset: none) and
``QDDENS_LABEL_CORS_ORIGINS`` (comma-separated allowed origins; unset: none).
"""

from __future__ import annotations

import os

from .compat import import_monailabel

import_monailabel()

from monailabel.app import app as _monailabel_app  # noqa: E402

from .guard import secure_app  # noqa: E402
from .server import ORIGINS_ENV, TOKEN_ENV  # noqa: E402

app = secure_app(
    _monailabel_app,
    token=os.environ.get(TOKEN_ENV) or None,
    origins=[o.strip() for o in os.environ.get(ORIGINS_ENV, "").split(",") if o.strip()],
)
