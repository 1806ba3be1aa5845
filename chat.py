"""One HTTP client for OpenAI-compatible chat endpoints (vLLM, llama.cpp's server, Ollama,
OpenAI), shared by text generation (`--llm-url`, generators/llm.py) and the contamination judge
(`--judge-url`, auditor/contamination/judge.py).

- One URL rule (`chat_url`): a server root, a `/v1` base or the full `/chat/completions` address
  all reach `.../v1/chat/completions` the same way for both flags.
- Timeouts on every request; HTTP 429 and 5xx are retried with exponential backoff (honouring a
  short `Retry-After`), so one rate-limit answer does not abort a whole repair plan.
- Key hygiene: the key is read from the environment variable the user names at call time, goes
  in the Authorization header only, is refused when a header cannot carry it, and is replaced by
  `<$VAR>` wherever a server quotes it back in an error. It is never stored.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

from .store.errors import InputError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0  # seconds: a longer Retry-After is capped (the next try may fail again)


def chat_url(url: str) -> str:
    """Accept a server root, a `/v1` base or the full `/chat/completions` address."""
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    if re.search(r"/v\d+$", u):
        return u + "/chat/completions"
    return u + "/v1/chat/completions"


class ChatClient:
    """POST chat completions to one endpoint; `complete` returns the reply's text or raises an
    InputError that names the endpoint, the flag to fix and never the key."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        key_env: str | None = "OPENAI_API_KEY",
        flag: str = "--llm-url",
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        workers: int = 4,
        temperature: float = 0.0,
    ):
        if not url or not re.match(r"^https?://", str(url)):
            raise InputError(
                f"bad {flag} {url!r}", "give an http(s) address, e.g. http://127.0.0.1:8000/v1"
            )
        self.url = chat_url(str(url))
        self.model = model or "default"
        self.key_env = key_env
        self.flag = flag
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.workers = int(workers)
        self.temperature = float(temperature)

    def _key(self) -> str:
        # stripped: a trailing newline (from `$(cat keyfile)`) would make an invalid header
        key = (os.environ.get(self.key_env) or "").strip() if self.key_env else ""
        if key and (not key.isprintable() or not key.isascii()):
            raise InputError(
                f"the API key in ${self.key_env} holds characters an HTTP header cannot carry",
                f"set {self.key_env} to the key alone (printable ASCII, no line breaks)",
            )
        return key

    def _scrub(self, text: str, key: str) -> str:
        return text.replace(key, f"<${self.key_env}>") if key else text

    def complete(self, messages: list[dict], seed: int | None = None, max_tokens: int = 512) -> str:
        import httpx

        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            body["seed"] = int(seed)
        key = self._key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for attempt in range(self.retries + 1):
            try:
                resp = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout)
            except httpx.HTTPError as exc:
                raise InputError(
                    f"cannot reach the chat endpoint {self.url}: {self._scrub(str(exc), key)}",
                    f"start the server or fix {self.flag}",
                ) from None
            if resp.status_code in RETRY_STATUS and attempt < self.retries:
                time.sleep(self._wait(resp, attempt))
                continue
            break
        if resp.status_code >= 400:
            detail = self._scrub(resp.text[:200], key)
            raise InputError(
                f"the chat endpoint {self.url} answered HTTP {resp.status_code}: {detail}",
                f"check {self.flag}, the model name and the key in ${self.key_env}",
            )
        try:
            return str(resp.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise InputError(
                f"the chat endpoint {self.url} did not answer in the chat-completions format",
                f"point {self.flag} at an OpenAI-compatible /v1 endpoint",
            ) from None

    def _wait(self, resp, attempt: int) -> float:
        """Seconds before the next try: the server's Retry-After (capped), else backoff."""
        after = resp.headers.get("Retry-After", "")
        try:
            return min(MAX_RETRY_AFTER, max(0.0, float(after)))
        except ValueError:
            return self.backoff * (2**attempt)

    def complete_many(
        self, batch: list[list[dict]], seeds: list[int | None], max_tokens: int = 512
    ) -> list[str]:
        """Replies in order; a few requests in flight at once."""
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(
                pool.map(lambda a: self.complete(a[0], a[1], max_tokens), zip(batch, seeds))
            )
