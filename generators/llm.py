"""Chat backends for text generation: an OpenAI-compatible endpoint, or a local causal LM.

Both take chat `messages` ([{"role": ..., "content": ...}]) and return the reply's text.

- `OpenAIChat`: POST `{url}/chat/completions` (vLLM, llama.cpp's server, Ollama and OpenAI speak
  it). The API key is read from the environment variable the user names (`--llm-key-env`) at
  call time; it is never stored in the store, the manifest or an error message. Without the
  variable set, requests go without an Authorization header (local servers need none).
- `LocalCausalLM`: a transformers causal LM loaded from a local folder (no download), using the
  tokenizer's chat template when it has one. Runs on the GPU when present.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..store.errors import InputError, MissingDependencyError


def chat_url(url: str) -> str:
    """Accept a server root, a `/v1` base or the full `/chat/completions` address."""
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    if re.search(r"/v\d+$", u):
        return u + "/chat/completions"
    return u + "/v1/chat/completions"


class OpenAIChat:
    backend = "openai"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        timeout: float = 120.0,
        workers: int = 4,
    ):
        if not url or not re.match(r"^https?://", url):
            raise InputError(
                f"bad --llm-url {url!r}", "give an http(s) address, e.g. http://127.0.0.1:8000/v1"
            )
        self.url = chat_url(url)
        self.model = model or "default"
        self.key_env = key_env
        self.temperature = temperature
        self.timeout = timeout
        self.workers = workers

    def complete(self, messages: list[dict], seed: int | None = None, max_tokens: int = 512) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            body["seed"] = int(seed)
        headers = {"Content-Type": "application/json"}
        # stray whitespace (a newline from `$(cat keyfile)`) would make an invalid header that
        # http.client reports by quoting it, key included
        key = (os.environ.get(self.key_env) or "").strip() if self.key_env else ""
        if key:
            if not key.isprintable() or not key.isascii():
                raise InputError(
                    f"the API key in ${self.key_env} holds characters an HTTP header cannot carry",
                    f"set {self.key_env} to the key alone (printable ASCII, no line breaks)",
                )
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            if key:  # some servers and proxies quote the credentials back in their errors
                detail = detail.replace(key, f"<${self.key_env}>")
            raise InputError(
                f"the LLM endpoint {self.url} answered HTTP {exc.code}: {detail}",
                f"check --llm-url, --llm-model and the key in ${self.key_env}",
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise InputError(
                f"cannot reach the LLM endpoint {self.url}: {getattr(exc, 'reason', exc)}",
                "start the server or fix --llm-url",
            ) from None
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise InputError(
                f"the LLM endpoint {self.url} did not answer in the chat-completions format",
                "point --llm-url at an OpenAI-compatible /v1 endpoint",
            ) from None

    def complete_many(self, batch: list[list[dict]], seeds: list[int], max_tokens: int = 512):
        """Replies in order; a few requests in flight at once."""
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(
                pool.map(lambda a: self.complete(a[0], a[1], max_tokens), zip(batch, seeds))
            )


class LocalCausalLM:
    backend = "transformers"

    def __init__(self, path: str, device: str | None = None, temperature: float = 0.0):
        p = Path(path)
        if not p.exists():
            raise InputError(
                f"no local model at {path}",
                "pass --local-model a folder saved by transformers `save_pretrained` (config.json, "
                "weights and tokenizer files)",
            )
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError(
                "transformers is not installed", "pip install transformers"
            ) from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            self.lm = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot load a causal LM from {path}: {str(exc)[:200]}",
                "the folder needs config.json, the weights and tokenizer files",
            ) from None
        from .common import torch_device

        self.device = torch_device(device)
        self.lm.to(self.device).eval()
        self.torch = torch
        self.model = str(p)
        self.temperature = temperature
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _prompt(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        parts = [f"{m['role'].upper()}: {m['content']}" for m in messages]
        return "\n\n".join(parts) + "\n\nASSISTANT:"

    def complete(self, messages: list[dict], seed: int | None = None, max_tokens: int = 512) -> str:
        torch = self.torch
        if seed is not None:
            torch.manual_seed(int(seed))
        enc = self.tokenizer(self._prompt(messages), return_tensors="pt").to(self.device)
        kw = {"max_new_tokens": int(max_tokens), "pad_token_id": self.tokenizer.pad_token_id}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature)
        else:
            kw.update(do_sample=False)
        with torch.no_grad():
            out = self.lm.generate(**enc, **kw)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def complete_many(self, batch: list[list[dict]], seeds: list[int], max_tokens: int = 512):
        return [self.complete(m, s, max_tokens) for m, s in zip(batch, seeds)]


_PREFIX = re.compile(
    r"^\s*(?:here(?: is|'s) the (?:rewritten|edited|revised) text:?|rewritten text:|edited text:|"
    r"revised text:|text:|answer:)\s*",
    re.IGNORECASE,
)


def clean_reply(reply: str) -> str:
    """The edited text out of a chat reply: no 'Rewritten text:' lead-in, no wrapping quotes."""
    s = _PREFIX.sub("", reply.strip()).strip()
    if s.startswith("```") and s.endswith("```"):
        s = s.strip("`").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s
