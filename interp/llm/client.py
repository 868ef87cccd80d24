"""`LLMClient`: chat completions from any OpenAI-compatible endpoint, cached, retried and run concurrently.

The key is read from an environment variable named in the config (never from a flag, never written anywhere).
Errors a user can cause (endpoint down, wrong model name, refused key) raise `LLMError` naming the fix.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from interp.llm.cache import ResponseCache, request_key

Messages = list[dict[str, str]]


class LLMError(ConnectionError):
    """The LLM endpoint cannot be used (unreachable, unknown model, refused key); the message says what to do."""


@dataclass(frozen=True)
class LLMConfig:
    """Where the LLM is and how to call it."""

    url: str  # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1
    model: str  # model name as the server knows it (`transformers serve`: the folder it serves)
    key_env: str | None = None  # environment variable holding the API key (None: no key, for local servers)
    timeout: float = 60.0  # seconds per request
    retries: int = 3  # further tries after a failed request (connection, timeout, 429, 5xx)
    backoff: float = 1.0  # seconds before the first retry, doubled after each
    concurrency: int = 8  # requests in flight at once
    max_tokens: int = 256  # reply length limit
    temperature: float = 0.0

    def key(self) -> str:
        """The API key from the environment (a placeholder when no variable is named: local servers ignore it)."""
        if self.key_env is None:
            return "no-key"
        value = os.environ.get(self.key_env)
        if not value:
            raise LLMError(f"the environment variable {self.key_env} holding the LLM key is not set or empty; "
                           f"export {self.key_env}=... or drop --llm-key-env for a local server")  # fmt: skip
        return value


def _retryable() -> tuple[type[Exception], ...]:
    import openai

    return (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


def _fatal_messages() -> dict[type[Exception], str]:
    """Errors no retry can fix, by type: what to tell the user ({url}, {model}, {key_env}, {error})."""
    import openai

    refused = "the LLM endpoint {url} refused the key ({error}); set {key_env} to a valid key"
    return {
        openai.AuthenticationError: refused,
        openai.PermissionDeniedError: refused,
        openai.NotFoundError: "the LLM endpoint {url} has no model {model!r} ({error}); pass a model it serves "
        "to --llm-model (its list: GET {url}/models)",
    }


class LLMClient:
    """Chat completions through the `openai` package; responses cached in `cache_path` (JSON lines) when given.

    Counters: `n_sent` requests sent, `n_cached` answered from the cache, `n_failed` given up on (reply None).
    """

    def __init__(self, config: LLMConfig, cache_path: str | Path | None = None, api_key: str | None = None):
        """`api_key` is for callers that hold a key in memory already; otherwise it is read from
        `config.key_env`. It is never stored in the config, the cache or any file."""
        import openai

        self.config = config
        key = api_key or config.key()
        self.openai = openai.OpenAI(base_url=config.url, api_key=key, timeout=config.timeout, max_retries=0)
        self.cache = ResponseCache(cache_path) if cache_path is not None else None
        self.n_sent = self.n_cached = self.n_failed = 0
        self.errors: list[str] = []  # the messages of requests given up on
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ errors
    def _fatal(self, error: Exception) -> LLMError | None:
        for kind, message in _fatal_messages().items():
            if isinstance(error, kind):
                return LLMError(message.format(url=self.config.url, model=self.config.model,
                                               key_env=self.config.key_env or "--llm-key-env VAR", error=error))  # fmt: skip
        return None

    def _unreachable(self, error: Exception) -> LLMError:
        import openai

        tries = self.config.retries + 1
        if isinstance(error, openai.APITimeoutError):
            return LLMError(f"the LLM endpoint {self.config.url} did not answer within {self.config.timeout:g} s "
                            f"({tries} tries); check the server's load or raise the timeout")  # fmt: skip
        if isinstance(error, openai.APIConnectionError):
            return LLMError(f"the LLM endpoint {self.config.url} is unreachable ({error}; {tries} tries); "
                            "start the server or fix --llm-url")  # fmt: skip
        return LLMError(f"the LLM endpoint {self.config.url} kept failing ({error}; {tries} tries); "
                        "check the server's log")  # fmt: skip

    def _with_retries(self, call: Any) -> Any:
        """`call()`, retried with exponential backoff on connection errors, timeouts, 429 and 5xx."""
        for attempt in range(self.config.retries + 1):
            try:
                return call()
            except _retryable() as e:
                if attempt == self.config.retries:
                    raise self._unreachable(e) from e
                time.sleep(self.config.backoff * 2**attempt)
            except Exception as e:
                fatal = self._fatal(e)
                if fatal is not None:
                    raise fatal from e
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------------------------ calls
    def check(self) -> list[str]:
        """Fail early, with the fix, when the endpoint is down, refuses the key or does not serve the model.

        Returns the models the server lists ([] when it has no model list)."""
        import openai

        try:
            served = [m.id for m in self._with_retries(lambda: list(self.openai.models.list()))]
        except LLMError as e:
            if isinstance(e.__cause__, openai.NotFoundError):  # a server without GET /models
                return []
            raise
        if served and self.config.model not in served:
            raise LLMError(f"the LLM endpoint {self.config.url} does not serve model {self.config.model!r}; it "
                           f"serves: {', '.join(served[:20])}; pass one of them to --llm-model")  # fmt: skip
        return served

    def request(self, messages: Messages, **params: Any) -> dict[str, Any]:
        """The request body for `messages` (its hash is the cache key)."""
        return {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens, **params}  # fmt: skip

    def chat(self, messages: Messages, **params: Any) -> str | None:
        """The reply text ("" for an empty reply), or None when the server rejected this one request (4xx)."""
        import openai

        body = self.request(messages, **params)
        key = request_key(body)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            with self.lock:
                self.n_cached += 1
            return hit
        with self.lock:
            self.n_sent += 1
        try:
            reply = self._with_retries(lambda: self.openai.chat.completions.create(**body))
        except openai.APIStatusError as e:  # a 4xx for this request only (e.g. a prompt over the context)
            with self.lock:
                self.n_failed += 1
                self.errors.append(str(e))
            return None
        text = (reply.choices[0].message.content or "") if reply.choices else ""
        if self.cache is not None:
            self.cache.put(key, text, self.config.model)
        return text

    def map(self, conversations: list[Messages], desc: str = "LLM", progress: bool = True,
            **params: Any) -> list[str | None]:  # fmt: skip
        """`chat(c, **params)` of each conversation, `concurrency` at a time, in order; the first `LLMError`
        stops them all. The bar advances as each reply arrives and is left showing the final count."""
        out: list[str | None] = [None] * len(conversations)
        if not conversations:
            return out
        bar = tqdm(total=len(conversations), desc=desc, disable=not progress)
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            futures = {pool.submit(self.chat, c, **params): i for i, c in enumerate(conversations)}
            pending = set(futures)
            while (
                pending
            ):  # FIRST_COMPLETED: with FIRST_EXCEPTION, wait returned only once every request was done
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        bar.close()
                        raise future.exception()
                    out[futures[future]] = future.result()
                    bar.update(1)
        bar.close()
        return out
