"""An OpenAI-compatible ``/v1/chat/completions`` endpoint for an agent gateway, as an aiohttp plugin.

Call :func:`setup` on the gateway's ``web.Application`` with its config and a :class:`Host`;
a request then runs as an ordinary agent run of the gateway.

The names here are what a custom gateway needs: the entry points, the host contract, the
config and its loaders, the auth middleware and authenticator, the errors those raise, and the metrics seam
with the middleware that counts and traces requests.
Everything else stays in its module (``openclaw_http_compat.config.ModelRef``,
``openclaw_http_compat.auth.client_ip``, …).
"""

from .auth import SharedSecretAuthenticator as SharedSecretAuthenticator, auth_middleware as auth_middleware
from .config import (
    AuthConfig as AuthConfig,
    ChatCompletionsConfig as ChatCompletionsConfig,
    HttpCompatConfig as HttpCompatConfig,
    load_config_file as load_config_file,
    read_config_file as read_config_file,
)
from .errors import (
    AuthenticationError as AuthenticationError,
    ConfigError as ConfigError,
    RateLimitedError as RateLimitedError,
)
from .host import (
    AgentEvent as AgentEvent,
    AgentRoster as AgentRoster,
    AgentRunner as AgentRunner,
    AgentRunRequest as AgentRunRequest,
    Authenticator as Authenticator,
    ChatMessage as ChatMessage,
    ClientTool as ClientTool,
    ContentPart as ContentPart,
    GenerationOptions as GenerationOptions,
    Host as Host,
    ImageInput as ImageInput,
    ImagePart as ImagePart,
    MessageRole as MessageRole,
    Principal as Principal,
    RunEnd as RunEnd,
    RunError as RunError,
    RunUsage as RunUsage,
    StopReason as StopReason,
    TextDelta as TextDelta,
    TextPart as TextPart,
    ToolCall as ToolCall,
    ToolChoice as ToolChoice,
)
from .idempotency import (
    Answer as Answer,
    IdempotencyRecord as IdempotencyRecord,
    IdempotencyStore as IdempotencyStore,
    MemoryIdempotencyStore as MemoryIdempotencyStore,
)
from .keys import PRINCIPAL_KEY as PRINCIPAL_KEY
from .metrics import NO_METRICS as NO_METRICS, Metrics as Metrics, NoMetrics as NoMetrics, RunOutcome as RunOutcome
from .observe import instrumentation_middleware as instrumentation_middleware
from .plugin import create_app as create_app, setup as setup
from .stored import (
    CompletionPage as CompletionPage,
    CompletionQuery as CompletionQuery,
    CompletionStore as CompletionStore,
    CompletionStoreUnavailable as CompletionStoreUnavailable,
    InMemoryCompletionStore as InMemoryCompletionStore,
    StoredCompletion as StoredCompletion,
    UnknownCursor as UnknownCursor,
)

__version__ = "0.1.0"

__all__ = (
    "NO_METRICS",
    "PRINCIPAL_KEY",
    "AgentEvent",
    "AgentRoster",
    "AgentRunRequest",
    "AgentRunner",
    "Answer",
    "AuthConfig",
    "AuthenticationError",
    "Authenticator",
    "ChatCompletionsConfig",
    "ChatMessage",
    "ClientTool",
    "CompletionPage",
    "CompletionQuery",
    "CompletionStore",
    "CompletionStoreUnavailable",
    "ConfigError",
    "ContentPart",
    "GenerationOptions",
    "Host",
    "HttpCompatConfig",
    "IdempotencyRecord",
    "IdempotencyStore",
    "ImageInput",
    "ImagePart",
    "InMemoryCompletionStore",
    "MemoryIdempotencyStore",
    "MessageRole",
    "Metrics",
    "NoMetrics",
    "Principal",
    "RateLimitedError",
    "RunEnd",
    "RunError",
    "RunOutcome",
    "RunUsage",
    "SharedSecretAuthenticator",
    "StopReason",
    "StoredCompletion",
    "TextDelta",
    "TextPart",
    "ToolCall",
    "ToolChoice",
    "UnknownCursor",
    "__version__",
    "auth_middleware",
    "create_app",
    "instrumentation_middleware",
    "load_config_file",
    "read_config_file",
    "setup",
)
