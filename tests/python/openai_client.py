"""Drives a hivemesh node's /v1/chat/completions with the official `openai`
package, as any OpenAI client would. Prints one JSON object of what it saw.
Usage: python3 openai_client.py BASE_URL"""

import json
import sys

import openai

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
question = [{"role": "user", "content": "What is the capital of France?"}]
seen = {"version": openai.__version__}

seen["models"] = sorted(model.id for model in client.models.list())

completion = client.chat.completions.create(model="council", messages=question)
seen["plain"] = {
    "content": completion.choices[0].message.content,
    "finish_reason": completion.choices[0].finish_reason,
    "model": completion.model,
    "hivemesh": completion.to_dict().get("hivemesh"),
}

chunks, text, extra = 0, "", None
for chunk in client.chat.completions.create(model="pipeline", messages=question, stream=True):
    chunks += 1
    for choice in chunk.choices:
        text += choice.delta.content or ""
    extra = chunk.to_dict().get("hivemesh") or extra
seen["streamed"] = {"content": text, "chunks": chunks, "hivemesh": extra}

try:
    client.chat.completions.create(model="council:no-such-profile", messages=question)
    seen["unknown_profile"] = None
except openai.NotFoundError as error:
    seen["unknown_profile"] = {"status": error.status_code, "message": str(error)}

print(json.dumps(seen))
