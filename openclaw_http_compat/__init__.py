"""An OpenAI-compatible ``/v1/chat/completions`` endpoint for an agent gateway, as an aiohttp plugin.

Call :func:`setup` on the gateway's ``web.Application`` with its config and a :class:`Host`;
a request then runs as an ordinary agent run of the gateway.
"""

from .auth import (
    AuthFailureLimiter as AuthFailureLimiter,
    SharedSecretAuthenticator as SharedSecretAuthenticator,
    auth_middleware as auth_middleware,
    bearer_credential as bearer_credential,
    client_ip as client_ip,
)
from .client import (
    env_proxy as env_proxy,
    open_client_session as open_client_session,
    send_request as send_request,
    transport_errors as transport_errors,
)
from .config import (
    AgentConfig as AgentConfig,
    AgentsConfig as AgentsConfig,
    AuthConfig as AuthConfig,
    ChatCompletionsConfig as ChatCompletionsConfig,
    GatewayConfig as GatewayConfig,
    ImagesConfig as ImagesConfig,
    ModelRef as ModelRef,
    ProviderConfig as ProviderConfig,
    RateLimitConfig as RateLimitConfig,
    load_config_file as load_config_file,
    normalize_agent_id as normalize_agent_id,
)
from .errors import (
    ApiError as ApiError,
    AuthenticationError as AuthenticationError,
    ConfigError as ConfigError,
    HttpCompatError as HttpCompatError,
    InvalidRequestError as InvalidRequestError,
    RateLimitedError as RateLimitedError,
    TransportError as TransportError,
    UpstreamError as UpstreamError,
)
from .host import (
    AgentEvent as AgentEvent,
    AgentRoster as AgentRoster,
    AgentRunner as AgentRunner,
    AgentRunRequest as AgentRunRequest,
    Authenticator as Authenticator,
    ClientTool as ClientTool,
    GenerationOptions as GenerationOptions,
    Host as Host,
    ImageInput as ImageInput,
    Principal as Principal,
    RunEnd as RunEnd,
    RunError as RunError,
    RunUsage as RunUsage,
    StopReason as StopReason,
    TextDelta as TextDelta,
    ToolCall as ToolCall,
)
from .keys import PRINCIPAL_KEY as PRINCIPAL_KEY
from .plugin import BASE_PATH as BASE_PATH, create_app as create_app, gateway_plugin as gateway_plugin, setup as setup

__version__ = "0.1.0"

__all__ = (
    "BASE_PATH",
    "PRINCIPAL_KEY",
    "AgentConfig",
    "AgentEvent",
    "AgentRoster",
    "AgentRunRequest",
    "AgentRunner",
    "AgentsConfig",
    "ApiError",
    "AuthConfig",
    "AuthFailureLimiter",
    "AuthenticationError",
    "Authenticator",
    "ChatCompletionsConfig",
    "ClientTool",
    "ConfigError",
    "GatewayConfig",
    "GenerationOptions",
    "Host",
    "HttpCompatError",
    "ImageInput",
    "ImagesConfig",
    "InvalidRequestError",
    "ModelRef",
    "Principal",
    "ProviderConfig",
    "RateLimitConfig",
    "RateLimitedError",
    "RunEnd",
    "RunError",
    "RunUsage",
    "SharedSecretAuthenticator",
    "StopReason",
    "TextDelta",
    "ToolCall",
    "TransportError",
    "UpstreamError",
    "__version__",
    "auth_middleware",
    "bearer_credential",
    "client_ip",
    "create_app",
    "env_proxy",
    "gateway_plugin",
    "load_config_file",
    "normalize_agent_id",
    "open_client_session",
    "send_request",
    "setup",
    "transport_errors",
)
