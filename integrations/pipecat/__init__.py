"""The yap-bus edge as a Pipecat LLM service (``pip install 'yap-bus[pipecat]'``).

::

    from integrations.pipecat import YapLLMService

    llm = YapLLMService(
        url="ws://127.0.0.1:8000/ws",
        api_key="yap_token",
        session_id="user-42",
        assistant_gender="woman",
    )

The core packages never import this one: Pipecat is an optional extra.
"""

from integrations.pipecat.backoff import ReconnectPolicy
from integrations.pipecat.protocol import tool_call_id
from integrations.pipecat.service import YapErrorFrame, YapLLMService, YapLLMSettings

__all__ = ["ReconnectPolicy", "YapErrorFrame", "YapLLMService", "YapLLMSettings", "tool_call_id"]
