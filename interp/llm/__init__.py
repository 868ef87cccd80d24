"""The project's one LLM client: any OpenAI-compatible chat endpoint (vLLM, `transformers serve`, llama.cpp
server, hosted APIs) through the official `openai` package, with retries, a thread pool and an on-disk cache."""

from interp.llm.cache import ResponseCache
from interp.llm.client import LLMClient, LLMConfig, LLMError

__all__ = ["LLMClient", "LLMConfig", "LLMError", "ResponseCache"]
