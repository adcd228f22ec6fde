"""Streams one chat completion with the official `openai` Python client
from the base URL given as the first argument, and prints the text and the
token usage: a check that the test stand-in speaks what real clients accept.
"""

import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-check")
stream = client.chat.completions.create(
    model="mock-model",
    messages=[{"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
)
text = ""
usage = None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
print(f"{text}|{usage.prompt_tokens}|{usage.completion_tokens}")
