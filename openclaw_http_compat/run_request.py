"""Building the :class:`~.host.AgentRunRequest` for a parsed chat request and its headers."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from .config import AgentsConfig, HttpCompatConfig, ModelRef
from .errors import InvalidRequestError
from .host import AgentRunRequest, Host
from .conversation import structured_messages
from .images import collect_images
from .keys import IMAGES_KEY, PRINCIPAL_KEY
from .prompt import active_turn, flatten_messages
from .request import ChatRequest
from .routing import resolve_agent_id, resolve_session_key

__all__ = ("MISSING_USER_MESSAGE", "build_run_request")

MISSING_USER_MESSAGE: Final = "Missing user message in `messages`."


def _header(request: web.Request, *names: str) -> str | None:
    for name in names:
        value = request.headers.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _message_channel(request: web.Request) -> str:
    value = _header(request, "x-openclaw-message-channel")
    return value.lower() if value else "webchat"


def _tool_line(chat: ChatRequest) -> str | None:
    # The run gets the client's tools and tool_choice as sent, for a runner to forward to its
    # model; a forced choice is also said in words, for agents whose model cannot be forced
    # (OpenClaw's prompt line). Either way it is checked on the way out, in .run.
    choice = chat.tool_choice
    if choice.mode == "required":
        return "You must call one of the available tools before responding."
    if choice.mode == "function":
        return f"You must call the {choice.name} tool before responding."
    return None


def _model_override(request: web.Request, agents: AgentsConfig, agent_id: str) -> str | None:
    """The ``x-openclaw-model`` header, checked against the agents' model allow-list.

    ``provider/model`` or a bare model id (the agent's provider). The agent's own model is
    always allowed; others must be in ``agents.defaults.models`` when that is set.
    """
    raw = _header(request, "x-openclaw-model")
    if raw is None:
        return None
    agent_model = agents.get(agent_id).model or agents.default_model
    if "/" in raw:
        ref = ModelRef.parse(raw)
        if ref is None:
            raise InvalidRequestError("Invalid `x-openclaw-model`.", param="x-openclaw-model")
        allowed = ref == agent_model or ref in agents.allowed_models
        shown = str(ref)
    else:
        # A bare id: the gateway's runner picks the provider; match the allow-list by id.
        allowed = (agent_model is not None and agent_model.model == raw) or any(
            m.model == raw for m in agents.allowed_models
        )
        shown = f"{agent_model.provider}/{raw}" if agent_model else raw
    if agents.allowed_models and not allowed:
        raise InvalidRequestError(f"Model '{shown}' is not allowed for agent '{agent_id}'.", param="x-openclaw-model")
    # The raw header goes to the run, as OpenClaw does; the runner resolves bare ids.
    return raw


async def build_run_request(
    request: web.Request, chat: ChatRequest, host: Host, config: HttpCompatConfig, run_id: str
) -> AgentRunRequest:
    """The agent run a chat request asks for: agent, session, prompt, images, tools, options.

    Raises:
        InvalidRequestError: an unknown agent, a refused ``x-openclaw-model``, an unusable
            image, or nothing for the agent to answer.
    """
    agents = config.agents
    agent_id = resolve_agent_id(
        chat.model, _header(request, "x-openclaw-agent-id", "x-openclaw-agent"), host.roster
    )
    session_header = _header(request, "x-openclaw-session-key")
    session_key = resolve_session_key(agent_id, session_header, chat.user)
    # Cheap refusals first: an image fetch may take seconds.
    model_override = _model_override(request, agents, agent_id)
    images = await collect_images(active_turn(chat.messages), config.chat_completions, request.app[IMAGES_KEY])
    prompt = flatten_messages(chat.messages, active_has_images=bool(images))
    if not prompt.message:
        raise InvalidRequestError(MISSING_USER_MESSAGE, param="messages")
    tool_line = _tool_line(chat)
    extra = prompt.extra_system_prompt
    if tool_line is not None:
        extra = f"{extra}\n\n{tool_line}" if extra else tool_line
    principal = request.get(PRINCIPAL_KEY)
    return AgentRunRequest(
        run_id=run_id,
        agent_id=agent_id,
        session_key=session_key,
        message=prompt.message,
        messages=structured_messages(chat.messages, images),
        new_session=session_header is None and not (chat.user or "").strip(),
        extra_system_prompt=extra,
        images=images,
        client_tools=chat.tools,
        tool_choice=chat.tool_choice,
        model_override=model_override,
        message_channel=_message_channel(request),
        sender_is_owner=principal.sender_is_owner if principal is not None else True,
        options=chat.options,
        stream=chat.stream,
    )
