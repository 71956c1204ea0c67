"""A small OpenAI-compatible provider for the multi-host test bed: one per
network namespace, on that namespace's loopback. Answers chat completions
(plain or streamed, with usage) like tests/support/mesh.rs's provider: the
curator's prompt gets "Final: ...", every other one a candidate answer.
No embeddings. Usage: fake_provider.py HOST PORT"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def answer_for(body):
    messages = body.get("messages") or []
    system = messages[0].get("content", "") if messages else ""
    if isinstance(system, str) and "the Curator" in system:
        return "Final: Paris is the capital of France."
    return "Paris is the capital of France."


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.send_json(400, {"error": {"message": "not JSON"}})
        if not self.path.endswith("/chat/completions"):
            return self.send_json(404, {"error": {"message": "no such endpoint here"}})
        text = answer_for(body)
        model = body.get("model", "fake")
        usage = {"prompt_tokens": 12, "completion_tokens": len(text.split()), "total_tokens": 12 + len(text.split())}
        if not body.get("stream"):
            return self.send_json(200, {
                "id": "fake-1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            })
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        pieces = [word + " " for word in text.split(" ")]
        pieces[-1] = pieces[-1].rstrip()
        for piece in pieces:
            chunk = {"id": "fake-1", "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        final = {"id": "fake-1", "object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
        self.wfile.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
