"""A loopback OpenAI-compatible chat server for tests (``ChatServer``), behaviour by model name."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Top-5 alternatives the loopback server reports for the answer token of "logprobs" models.
TOP_LOGPROBS = [("B", 0.6), (" A", 0.2), ("A", 0.1), ("Hello", 0.05), ("(C", 0.03)]


def _completion(model: str, content: str, logprobs: list | None) -> dict:
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None if logprobs is None else {"content": logprobs},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _token(token: str, p: float, top: list | None = None) -> dict:
    alternatives = [{"token": t, "logprob": math.log(q), "bytes": None} for t, q in (top or [(token, p)])]
    return {"token": token, "logprob": math.log(p), "bytes": None, "top_logprobs": alternatives}


class ChatServer:
    """A tiny OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1; behaviour by model name.

    - ``logprobs``: answers "B" and, when asked, returns ``TOP_LOGPROBS`` for that token;
    - ``verbose-logprobs``: answers "The answer is B" with logprobs for each token;
    - ``partial-logprobs``: answers "B" with alternatives that leave out "B";
    - ``letter``: answers "The answer is (C)." and never returns logprobs;
    - ``mute``: answers without naming a letter;
    - ``flaky``: HTTP 503 on every odd request, then like ``logprobs``;
    - ``broken``: always HTTP 500.
    """

    top_logprobs = TOP_LOGPROBS

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.calls: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                status, reply = server.reply(body, self.path)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reply(self, body: dict, path: str) -> tuple[int, dict]:
        model, wants = body["model"], bool(body.get("logprobs"))
        self.calls[model] = self.calls.get(model, 0) + 1
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}
        if model == "broken" or (model == "flaky" and self.calls[model] % 2 == 1):
            return (500 if model == "broken" else 503), {"error": {"message": "server fell over"}}
        if model in ("logprobs", "flaky"):
            top = TOP_LOGPROBS[: body.get("top_logprobs") or 0] or None
            return 200, _completion(model, "B", [_token("B", 0.6, top)] if wants else None)
        if model == "verbose-logprobs":
            tokens = [_token("The", 0.9), _token(" answer", 0.9), _token(" is", 0.9),
                      _token(" B", 0.7, [(" B", 0.7), (" D", 0.2), (" the", 0.1)])]
            return 200, _completion(model, "The answer is B", tokens if wants else None)
        if model == "partial-logprobs":  # the chosen token is missing from its alternatives
            return 200, _completion(model, "B", [_token("B", 0.6, [(" A", 0.2), ("C", 0.1)])])
        if model == "letter":
            return 200, _completion(model, "The answer is (C).", None)
        if model == "mute":
            return 200, _completion(model, "I would rather not say.", None)
        return 404, {"error": {"message": f"model {model!r} not found"}}
