"""The one chat client (datacure/chat.py) against a real local HTTP server: one URL rule for
`--llm-url` and `--judge-url`, retries with backoff on 429/5xx, a clear error when they run out,
and the key never quoted back."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datacure.chat import ChatClient, chat_url
from datacure.store.errors import InputError


class _Flaky(BaseHTTPRequestHandler):
    """Answers only at /v1/chat/completions (404 elsewhere); the first `fail` requests get
    `status` (with `Retry-After: 0` when `retry_after`), then a chat reply."""

    fail, status, retry_after = 0, 429, False
    paths: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Flaky.paths.append(self.path)
        if self.path != "/v1/chat/completions":
            code, data = 404, b'{"error": "not found"}'
        elif _Flaky.fail > 0:
            _Flaky.fail -= 1
            code, data = _Flaky.status, json.dumps({"error": "slow down"}).encode()
        else:
            reply = "True" if "Text B:" in body["messages"][-1]["content"] else "ok"
            code = 200
            data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(code)
        if code != 200 and _Flaky.retry_after:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def root():
    _Flaky.fail, _Flaky.status, _Flaky.retry_after, _Flaky.paths = 0, 429, False, []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


MSG = [{"role": "user", "content": "x"}]


def test_one_url_rule():
    for given in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/chat/completions"):
        assert chat_url(given) == "http://h:1/v1/chat/completions"


@pytest.mark.parametrize("status", [429, 503])
def test_retries_then_answers(root, status):
    _Flaky.fail, _Flaky.status = 2, status
    client = ChatClient(root, "m", None, backoff=0.01)
    assert client.complete(MSG) == "ok"
    assert _Flaky.paths == ["/v1/chat/completions"] * 3


def test_retry_after_is_honoured_and_retries_run_out(root):
    _Flaky.fail, _Flaky.retry_after = 10, True
    client = ChatClient(root, "m", None, retries=2, backoff=60)  # Retry-After 0 wins
    with pytest.raises(InputError, match="HTTP 429") as err:
        client.complete(MSG)
    assert len(_Flaky.paths) == 3 and "--llm-url" in err.value.fix


def test_a_client_error_is_not_retried(root):
    client = ChatClient(root + "/nowhere/chat/completions", "m", None, backoff=0.01)
    with pytest.raises(InputError, match="HTTP 404"):
        client.complete(MSG)
    assert len(_Flaky.paths) == 1


def test_judge_and_generation_reach_the_same_endpoint_from_a_server_root(root):
    from datacure.auditor.contamination.judge import judge_pairs
    from datacure.generators.llm import OpenAIChat

    assert OpenAIChat(root).complete(MSG) == "ok"
    _Flaky.fail = 1  # one rate-limit answer no longer costs the verdict
    verdicts, errors = judge_pairs(root, "m", None, [("a", "b"), ("c", "d")])
    assert verdicts == [True, True] and errors == []
    assert set(_Flaky.paths) == {"/v1/chat/completions"}  # --judge-url root gave a 404 before


def test_unreachable_and_bad_urls_say_which_flag(root):
    with pytest.raises(InputError, match="bad --judge-url"):
        ChatClient("ftp://x", flag="--judge-url")
    with pytest.raises(InputError, match="cannot reach") as err:
        ChatClient("http://127.0.0.1:9", None, None, "--judge-url", timeout=2).complete(MSG)
    assert "--judge-url" in err.value.fix
