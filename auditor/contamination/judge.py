"""Tier 3 of `contamination`: an LLM judge behind an OpenAI-compatible chat endpoint.

Pairs (benchmark item, row) go to `POST {url}/chat/completions`, asking whether the row is the
same item rephrased, as lm-sys/llm-decontaminator does. The API key is read from the environment
variable the user names and goes in the Authorization header only; it is never stored or logged.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from ...store.errors import InputError

# --- tier 3: LLM judge -------------------------------------------------------------------------
JUDGE_SYSTEM = (
    "You compare two texts for benchmark contamination. Answer with one word: True or False."
)
JUDGE_PROMPT = (
    "Text A is an item of an evaluation benchmark. Text B comes from a training set.\n"
    "Is Text B the same item as Text A, copied, paraphrased, reworded, reordered or translated, "
    "so that a model trained on B would have seen A's problem and answer? Changing only names, "
    "numbers or wording still counts as the same item; a different problem does not.\n\n"
    "Text A:\n{a}\n\nText B:\n{b}\n\nAnswer True or False."
)


def judge_pairs(
    url: str, model: str, key_env: str | None, pairs: list[tuple[str, str]], timeout: float = 60
) -> tuple[list[bool | None], list[str]]:
    """Ask an OpenAI-compatible chat endpoint whether each (benchmark, row) pair is the same
    item. Returns one verdict per pair (None when the call failed) and the distinct errors.
    The key (from `key_env`) goes in the Authorization header only."""
    from concurrent.futures import ThreadPoolExecutor

    endpoint = url.rstrip("/") + "/chat/completions"
    # stripped: a trailing newline would make an invalid header (http.client quotes it)
    key = (os.environ.get(key_env) or "").strip() if key_env else ""
    headers = {"Content-Type": "application/json"}
    if key:
        if not key.isprintable() or not key.isascii():
            raise InputError(
                f"the API key in ${key_env} holds characters an HTTP header cannot carry",
                f"set {key_env} to the key alone (printable ASCII, no line breaks)",
            )
        headers["Authorization"] = f"Bearer {key}"

    def ask(pair: tuple[str, str]) -> tuple[bool | None, str | None]:
        body = {
            "model": model,
            "temperature": 0,
            "max_tokens": 5,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_PROMPT.format(a=pair[0], b=pair[1])},
            ],
        }
        req = urllib.request.Request(
            endpoint, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                out = json.loads(resp.read().decode("utf-8"))
            text = out["choices"][0]["message"]["content"] or ""
        except urllib.error.HTTPError as exc:
            return None, f"HTTP {exc.code} from {endpoint}"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            return None, f"cannot reach {endpoint}: {getattr(exc, 'reason', exc)}"
        except (ValueError, KeyError, IndexError, TypeError):
            return None, f"{endpoint} did not answer in the OpenAI chat format"
        word = text.strip().strip("*.\"' ").lower()
        if word.startswith(("true", "yes")):
            return True, None
        if word.startswith(("false", "no")):
            return False, None
        return None, f"unexpected judge answer {text.strip()[:40]!r}"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ask, pairs))
    errors = sorted({e for _, e in results if e})
    return [v for v, _ in results], errors
