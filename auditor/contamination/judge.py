"""Tier 3 of `contamination`: an LLM judge behind an OpenAI-compatible chat endpoint.

Pairs (benchmark item, row) go to the chat endpoint (datacure/chat.py: the same URL rule,
timeouts and retries as `--llm-url`), asking whether the row is the same item rephrased, as
lm-sys/llm-decontaminator does. The API key is read from the environment variable the user names
and goes in the Authorization header only; it is never stored or logged.
"""

from __future__ import annotations

from ...chat import ChatClient
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
    The shared client (datacure/chat.py) gives `--judge-url` the same URL rule, timeouts and
    retries as `--llm-url`; the key (from `key_env`) goes in the Authorization header only."""
    from concurrent.futures import ThreadPoolExecutor

    client = ChatClient(url, model, key_env, "--judge-url", timeout=timeout)
    client._key()  # a key no header can carry is the user's to fix: raise before any call

    def ask(pair: tuple[str, str]) -> tuple[bool | None, str | None]:
        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_PROMPT.format(a=pair[0], b=pair[1])},
        ]
        try:
            text = client.complete(messages, max_tokens=5)
        except InputError as exc:  # one failed pair is a null verdict, counted in the info
            return None, exc.problem
        word = text.strip().strip("*.\"' ").lower()
        if word.startswith(("true", "yes")):
            return True, None
        if word.startswith(("false", "no")):
            return False, None
        return None, f"unexpected judge answer {text.strip()[:40]!r}"

    with ThreadPoolExecutor(max_workers=client.workers) as pool:
        results = list(pool.map(ask, pairs))
    errors = sorted({e for _, e in results if e})
    return [v for v, _ in results], errors
