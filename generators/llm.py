"""Chat backends for text generation: an OpenAI-compatible endpoint, or a local causal LM.

Both take chat `messages` ([{"role": ..., "content": ...}]) and return the reply's text.

- `OpenAIChat`: the shared chat client (datacure/chat.py: one URL rule, timeouts, retries on
  429/5xx) under `--llm-url`. The API key is read from the environment variable the user names
  (`--llm-key-env`) at call time; it is never stored in the store, the manifest or an error
  message. Without the variable set, requests go without an Authorization header.
- `LocalCausalLM`: a transformers causal LM loaded from a local folder (no download), using the
  tokenizer's chat template when it has one. Runs on the GPU when present.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..chat import ChatClient, chat_url
from ..store.errors import InputError, MissingDependencyError

__all__ = ["LocalCausalLM", "OpenAIChat", "chat_url", "clean_reply"]


class OpenAIChat(ChatClient):
    """Text generation's chat backend: the shared client (datacure/chat.py) under `--llm-url`."""

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
        super().__init__(
            url, model, key_env, "--llm-url", timeout=timeout, workers=workers,
            temperature=temperature,
        )  # fmt: skip


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
