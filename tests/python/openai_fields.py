"""Drives a hivemesh node's /v1/chat/completions with the official `openai`
package where the answer depends on the request's fields: a failed job must
raise, usage must arrive in a final chunk, tool-call history must be taken,
and unsupported fields must raise BadRequestError naming them.
Prints one JSON object of what it saw. Usage: python3 openai_fields.py BASE_URL"""

import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
question = [{"role": "user", "content": "What is the capital of France?"}]
failing = [{"role": "user", "content": "Please FAIL this one."}]
seen = {"version": openai.__version__}

# A failed job, streamed: the SDK raises on the error event.
try:
    text = ""
    for chunk in client.chat.completions.create(model="council", messages=failing, stream=True):
        for choice in chunk.choices:
            text += choice.delta.content or ""
    seen["failed_stream"] = {"raised": None, "text": text}
except openai.APIError as error:
    seen["failed_stream"] = {"raised": type(error).__name__, "message": error.message}

# The same, not streamed.
try:
    client.chat.completions.create(model="council", messages=failing)
    seen["failed_plain"] = {"raised": None}
except openai.APIStatusError as error:
    seen["failed_plain"] = {"raised": type(error).__name__, "status": error.status_code, "message": error.message}

# Usage in a final chunk.
usage, text, calls = None, "", None
for chunk in client.chat.completions.create(
    model="council", messages=question, stream=True, stream_options={"include_usage": True}
):
    for choice in chunk.choices:
        text += choice.delta.content or ""
    extra = chunk.to_dict().get("hivemesh")
    if extra:
        calls = len(extra["outcome"]["contributions"])
    if chunk.usage is not None:
        usage = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens,
                 "choices": len(chunk.choices)}
seen["usage"] = {"text": text, "usage": usage, "calls": calls}

# A tool-using history, as an agent framework replays it.
history = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "user", "content": "So, what is it like?"},
]
completion = client.chat.completions.create(model="council", messages=history)
seen["tools_history"] = {"content": completion.choices[0].message.content}

refused = {}
for field, value in [("n", 2), ("logprobs", True),
                     ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})]:
    try:
        client.chat.completions.create(model="council", messages=question, **{field: value})
        refused[field] = None
    except openai.BadRequestError as error:
        refused[field] = {"status": error.status_code, "param": (error.body or {}).get("param"),
                          "message": error.message}
seen["refused"] = refused

print(json.dumps(seen))
