"""The HTTP API: FastAPI routers, one module per route group, assembled in `app.py`."""
