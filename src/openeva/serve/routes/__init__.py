"""The routes of the HTTP service, one :class:`fastapi.APIRouter` per concern.

Each route is a top-level function that takes the :class:`~openeva.serve.state.ServiceState` through
``Depends(get_state)``; :data:`ROUTERS` is the order ``create_app`` includes them in (the order of the
OpenAPI paths).
"""

from openeva.serve.routes import classify, embed, health, index, openai, page, search

ROUTERS = (health.router, openai.router, embed.router, classify.router, search.router, index.router, page.router)

__all__ = ["ROUTERS"]
