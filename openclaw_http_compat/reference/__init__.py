"""The reference gateway: a small but real agent gateway hosting the plugin.

It keeps session transcripts in SQLite and answers with the built-in ``echo`` provider or any
configured OpenAI-compatible provider. It uses only the plugin's public API.
"""

from .config import GatewayConfig as GatewayConfig, load_gateway_config as load_gateway_config
from .runtime import AgentRuntime as AgentRuntime
from .store import SessionStore as SessionStore, Turn as Turn

__all__ = ("AgentRuntime", "GatewayConfig", "SessionStore", "Turn", "load_gateway_config")
