"""The official OpenAI Python SDK against a Karta host, with only `base_url`
and `api_key` changed. Run by tests/all/openai_adapters.rs with the venv of
scripts/install-openai-python.sh; the host and its data are set up there
and passed in the environment:

  KARTA_URL         http://127.0.0.1:PORT
  KARTA_KEY         a write key of acme
  KARTA_GLOBEX_KEY  a write key of globex
  KARTA_TOKEN       a session token of acme/shop (for the flat routes)

acme/shop and acme/help run examples/hello, acme/bot the support bot (a
tool that runs, one that needs approval); acme/help has a budget of 0.

Every object and stream event the SDK returns is checked against the SDK's
own types strictly (validated, not just constructed, and without fields the
types do not know), and its content is asserted on. Exit status 0: all
passed; the failing check otherwise.
"""

import json
import os
import sys
import urllib.request

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

URL = os.environ["KARTA_URL"]
KEY = os.environ["KARTA_KEY"]


def client(path, key=KEY):
    return openai.OpenAI(base_url=URL + path, api_key=key, max_retries=0)


def strict(model, data, where):
    """`data` validated as `model`, with no field the SDK does not know."""
    parsed = model.model_validate(data)
    no_extras(parsed, where)
    return parsed


def no_extras(value, where):
    if isinstance(value, pydantic.BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{where}: fields unknown to the SDK: {sorted(extra)}"
        for name in type(value).model_fields:
            no_extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            no_extras(item, f"{where}[{index}]")


def check(name, test):
    test()
    print(f"ok {name}", flush=True)


def chat_unary():
    raw = client("/acme/shop/v1").chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "/say Hi from Karta"}],
    )
    completion = raw.parse()
    strict(ChatCompletion, raw.http_response.json(), "chat.completion")
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-"), completion.id
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hi from Karta", choice.message.content
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def chat_conversation():
    completion = client("/acme/shop/v1").chat.completions.create(
        model="any",
        messages=[
            {"role": "system", "content": "Answer like a pirate."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Ahoy Ada."},
            {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
        ],
    )
    text = completion.choices[0].message.content
    # The offline model echoes what it was sent: the whole conversation.
    for said in ["Answer like a pirate.", "My name is Ada.", "Ahoy Ada.", "What is my name?"]:
        assert said in text, (said, text)


def chat_stream():
    stream = client("/acme/shop/v1").chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "/say streamed words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = []
    for chunk in stream:
        strict(ChatCompletionChunk, chunk.to_dict(), "chat.completion.chunk")
        assert chunk.object == "chat.completion.chunk"
        chunks.append(chunk)
    assert len({c.id for c in chunks}) == 1, "one id for every chunk"
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and not first.delta.content, first
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "streamed words", content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], finishes
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens > 0
    # On the wire: `data: [DONE]` ends it.
    request = urllib.request.Request(
        URL + "/acme/shop/v1/chat/completions",
        data=json.dumps({"model": "m", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        datas = [line[6:] for line in answer.read().decode().splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]", datas
    assert json.loads(datas[-2])["choices"][0]["finish_reason"] == "stop"


def chat_tools_run_on_the_host():
    completion = client("/acme/bot/v1").chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": '/tool convert {"value":3,"from":"mi","to":"km"}'}],
    )
    message = completion.choices[0].message
    assert not message.tool_calls and completion.choices[0].finish_reason == "stop"
    assert "Tool convert returned" in message.content, message.content


def responses_unary_then_stream_continuing():
    shop = client("/acme/shop/v1")
    raw = shop.responses.with_raw_response.create(model="gpt-4.1", input="remember the word zebra")
    first = raw.parse()
    strict(Response, raw.http_response.json(), "response")
    assert first.id.startswith("resp_") and first.status == "completed", first
    assert first.output_text == 'You said: "remember the word zebra".', first.output_text
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens > 0

    stream = shop.responses.create(
        model="gpt-4.1", input="what was the word?", previous_response_id=first.id, stream=True,
    )
    events = list(stream)
    for index, event in enumerate(events):
        strict(type(event), event.to_dict(), event.type)
        assert event.sequence_number == index, (index, event)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] == "response.completed", kinds
    for kind in ["response.output_item.added", "response.content_part.added",
                 "response.output_text.delta", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"]:
        assert kind in kinds, (kind, kinds)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    completed = events[-1].response
    assert deltas == done.text == completed.output_text, (deltas, done.text)
    # The second turn saw the first: the same session.
    assert 'Earlier you said: "remember the word zebra"' in deltas, deltas
    assert completed.status == "completed" and completed.usage.output_tokens > 0
    assert completed.previous_response_id == first.id
    assert events[0].response.id == completed.id != first.id

    # And that one continues too.
    third = shop.responses.create(model="m", input="and now?", previous_response_id=completed.id)
    assert 'Earlier you said: "what was the word?"' in third.output_text, third.output_text

    # Another org's key cannot continue acme's response.
    try:
        client("/globex/shop/v1", os.environ["KARTA_GLOBEX_KEY"]).responses.create(
            model="m", input="hi", previous_response_id=first.id)
        raise AssertionError("another org continued acme's response")
    except openai.NotFoundError as error:
        assert error.code == "previous_response_not_found", error.body
        assert error.param == "previous_response_id"
        assert "zebra" not in str(error.body)


def responses_tools_and_approvals():
    bot = client("/acme/bot/v1")
    events = list(bot.responses.create(
        model="m", stream=True,
        input='/tool convert {"value":3,"from":"mi","to":"km"}\n'
              '/tool write {"path": "n.txt", "content": "note"}',
    ))
    for event in events:
        strict(type(event), event.to_dict(), event.type)
    completed = events[-1]
    assert completed.type == "response.completed", [e.type for e in events]
    calls = {item.name: item for item in completed.response.output if item.type == "mcp_call"}
    assert calls["convert"].status == "completed" and calls["convert"].output, calls
    # `write` needs a person's approval: the adapters deny it.
    assert calls["write"].status == "failed" and calls["write"].error, calls
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added.count("mcp_call") == 2, added
    assert "Tool convert returned" in completed.response.output_text


def flat_routes_with_a_session_token():
    flat = client("/v1", os.environ["KARTA_TOKEN"])
    completion = flat.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "/say flat"}])
    assert completion.choices[0].message.content == "flat"
    assert flat.responses.create(model="m", input="/say flat too").output_text == "flat too"


def errors():
    try:
        client("/acme/shop/v1", "kt_live_00000000000000000000000000000000").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a bad key was let in")
    except openai.AuthenticationError as error:
        assert error.status_code == 401 and error.code == "invalid_api_key", error.body
        assert set(error.body) == {"message", "type", "param", "code"}, error.body
    try:
        client("/acme/help/v1").responses.create(model="m", input="hi")
        raise AssertionError("a turn ran past its budget")
    except openai.APIStatusError as error:
        assert error.status_code == 402, error
        assert error.code == "budget_exhausted" and error.type == "insufficient_quota", error.body
    try:
        client("/acme/shop/v1").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"bogus": 1})
        raise AssertionError("an unknown parameter was accepted")
    except openai.BadRequestError as error:
        assert error.param == "bogus" and error.code == "unknown_parameter", error.body
    try:
        client("/acme/shop/v1").responses.create(model="m", input="hi", previous_response_id="resp_nope")
        raise AssertionError("an unknown response was continued")
    except openai.NotFoundError as error:
        assert error.code == "previous_response_not_found", error.body


def failed_turns():
    shop = client("/acme/shop/v1")
    fail = "/fail 500 the model broke"
    try:
        shop.chat.completions.create(model="m", messages=[{"role": "user", "content": fail}])
        raise AssertionError("a failed turn answered")
    except openai.InternalServerError as error:
        assert error.code == "model_error" and error.type == "server_error", error.body
    # Mid-stream: the error object is the stream's last `data:`.
    stream = shop.chat.completions.create(
        model="m", messages=[{"role": "user", "content": fail}], stream=True)
    seen = []
    try:
        for chunk in stream:
            seen.append(chunk)
        raise AssertionError("a failed stream ended quietly")
    except openai.APIError as error:
        assert "the model broke" in error.message, error.message
    assert seen and seen[0].choices[0].delta.role == "assistant", seen
    events = list(shop.responses.create(model="m", input=fail, stream=True))
    for event in events:
        strict(type(event), event.to_dict(), event.type)
    last = events[-1]
    assert last.type == "response.failed", [e.type for e in events]
    assert last.response.status == "failed" and "the model broke" in last.response.error.message


TESTS = [
    chat_unary,
    chat_conversation,
    chat_stream,
    chat_tools_run_on_the_host,
    responses_unary_then_stream_continuing,
    responses_tools_and_approvals,
    flat_routes_with_a_session_token,
    errors,
    failed_turns,
]

if __name__ == "__main__":
    print(f"openai {openai.__version__}", flush=True)
    for test in TESTS:
        check(test.__name__, test)
    print(f"all {len(TESTS)} client checks ok")
    sys.exit(0)
