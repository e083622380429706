"""The ``/v1/models`` routes: the agent targets a client may put in ``model``."""

from __future__ import annotations

from aiohttp import web

from .errors import InvalidRequestError
from .host import Host
from .keys import HOST_KEY
from .wire import json_response

__all__ = ("get_model", "list_models")


def _model_ids(host: Host) -> list[str]:
    return ["openclaw", "openclaw/default", *(f"openclaw/{a}" for a in host.roster.agent_ids)]


def _model_object(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "openclaw", "permission": []}


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models``: the agent targets a client may put in ``model``."""
    host = request.app[HOST_KEY]
    return json_response({"object": "list", "data": [_model_object(m) for m in _model_ids(host)]})


async def get_model(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{id}``."""
    host = request.app[HOST_KEY]
    model_id = request.match_info.get("model_id", "").strip()
    if not model_id:
        raise InvalidRequestError("Missing model id.")
    if model_id not in _model_ids(host):
        raise InvalidRequestError(f"Model '{model_id}' not found.", status=404, code="model_not_found")
    return json_response(_model_object(model_id))
