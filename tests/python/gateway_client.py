"""Drives a hivemesh node's gateway with the official openai client: a
peer's model plain and streamed, embeddings, and an unknown model. Prints
what it saw as JSON. Usage: gateway_client.py BASE_URL"""

import json
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed", max_retries=0)
seen = {}

plain = client.chat.completions.create(
    model="qwen-b", messages=[{"role": "user", "content": "Hi"}], temperature=0.3
)
seen["plain"] = plain.choices[0].message.content

parts = []
for chunk in client.chat.completions.create(
    model="mistral-c", messages=[{"role": "user", "content": "Hi"}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
seen["streamed"] = "".join(parts)

embedded = client.embeddings.create(model="qwen-b", input=["a", "bcd"], encoding_format="float")
seen["embeddings"] = len(embedded.data)

try:
    client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "Hi"}])
    seen["unknown"] = 200
except openai.NotFoundError as error:
    seen["unknown"] = error.status_code

print(json.dumps(seen))
