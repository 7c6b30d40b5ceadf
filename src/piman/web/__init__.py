"""The web: FastAPI app (REST API under /api/v1, the UI at /), composed from the context's
handles (``app``), what routes may depend on (``deps``), and the HTTP service (``server``)."""
