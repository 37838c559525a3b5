"""Translation through any OpenAI-compatible chat-completions endpoint (DeepSeek, Qwen, vLLM, Ollama...).

Per-attempt timeout, a bounded number of retries with exponential backoff for transient failures
(timeouts, connection errors, HTTP 429/5xx, malformed or empty answers); authentication and other
client errors are not retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from bot.prompts.httpclient import HttpClient, HttpConnectionError, HttpTimeout
from bot.prompts.language import detect_language
from bot.prompts.translate.base import TranslationError

log = logging.getLogger("bot.prompts.translate.openai")

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_QUOTES = "\"'`“”‘’「」『』"
# Chat models sometimes decline instead of translating; such an answer must not become the prompt.
_DECLINE = re.compile(
    r"^(?:i['’]?m sorry|sorry[,.!]|i (?:can(?:no|['’])t|am (?:not able|unable)|won['’]t)|as an ai)",
    re.IGNORECASE,
)


def chat_completions_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def parse_chat_answer(body: bytes) -> str:
    """Extract the assistant text of a chat-completions answer, cleaned of reasoning blocks, quotes
    and labels. Raises TranslationError('malformed' / 'empty')."""
    try:
        data: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TranslationError("malformed", f"not JSON: {exc}") from exc
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise TranslationError("malformed", f"missing choices[0].message.content ({exc!r})") from exc
    if not isinstance(content, str):
        raise TranslationError("malformed", f"content is {type(content).__name__}, not text")
    text = _THINK.sub("", content).strip()
    text = re.sub(r"^(english|translation|译文|翻译)\s*[:：]\s*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split()).strip(_QUOTES).strip()
    if not text:
        raise TranslationError("empty", "assistant content is empty")
    if _DECLINE.match(text):
        raise TranslationError("malformed", "the model declined instead of translating")
    if detect_language(text).cjk_ratio > 0.5:  # mostly Chinese (a kept name or character is fine)
        raise TranslationError("malformed", "the answer is not in English")
    return text


class OpenAICompatTranslator:
    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        http_client: HttpClient,
        timeout_s: float = 10.0,
        retries: int = 1,
        retry_backoff_s: float = 0.5,
        temperature: float = 0.2,
        max_tokens: int = 300,
        system_prompt: str,
    ) -> None:
        self.url = chat_completions_url(base_url)
        self.model = model
        self._api_key = api_key
        self._http = http_client
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt

    def _payload(self, text: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": text},
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stream": False,
        }

    async def _attempt(self, text: str) -> str:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            resp = await self._http.post_json(
                self.url, self._payload(text), headers=headers, timeout_s=self.timeout_s
            )
        except HttpTimeout as exc:
            raise TranslationError("timeout", str(exc)) from exc
        except HttpConnectionError as exc:
            raise TranslationError("unavailable", str(exc)) from exc
        if resp.status in (401, 403):
            raise TranslationError("auth", f"HTTP {resp.status}", status=resp.status)
        if resp.status != 200:
            raise TranslationError("http", resp.body[:200].decode("utf-8", "replace"), status=resp.status)
        return parse_chat_answer(resp.body)

    @staticmethod
    def _retryable(error: TranslationError) -> bool:
        if error.reason == "http":
            return error.status == 429 or (error.status or 0) >= 500
        if error.detail.startswith("the model declined"):
            return False  # asking again gives the same answer
        return error.reason in ("timeout", "unavailable", "malformed", "empty")

    async def translate(self, text: str) -> str:
        last: TranslationError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_backoff_s * (2 ** (attempt - 1)))
            try:
                return await self._attempt(text)
            except TranslationError as exc:
                last = exc
                log.info(
                    "chat-completions attempt %d/%d failed: %s",
                    attempt + 1,
                    self.retries + 1,
                    exc,
                    extra={"backend": self.name, "attempt": attempt + 1, "reason": exc.reason},
                )
                if not self._retryable(exc):
                    break
        assert last is not None
        raise last
