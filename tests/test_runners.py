"""The runners against loopback emulators, through the real anthropic SDK and requests."""

import time
from dataclasses import replace

import pytest

from providers import RUNNERS, Call, CompletionRequest, ProviderError
from providers import anthropic as anthropic_runner

from .emulators import Reply, SilentServer, anthropic_error


def request(model="claude-haiku-4-5", timeout=5.0, max_tokens=64):
    return CompletionRequest(
        model=model, system="sys prompt", message="hello", max_tokens=max_tokens, timeout=timeout
    )


@pytest.fixture
def anthropic(providers):
    return providers[0]


@pytest.fixture
def ollama(providers):
    return providers[1]


def test_anthropic_success_counts_cache_tokens_as_input(anthropic):
    completion = RUNNERS["anthropic"](request())
    assert completion.text == "echo: hello"
    # 20 input + 5 cache writes + 7 cache reads; 30 output
    assert (completion.input_tokens, completion.output_tokens) == (32, 30)
    path, payload, headers = anthropic.calls[-1]
    assert path == "/v1/messages"
    assert payload["model"] == "claude-haiku-4-5"
    assert payload["system"] == "sys prompt"
    assert payload["max_tokens"] == 64
    assert payload["messages"] == [{"role": "user", "content": "hello"}]
    assert "sk-ant-test" in (
        headers.get("x-api-key"),
        headers.get("authorization", "").removeprefix("Bearer "),
    )


def test_anthropic_usage_without_cache_fields(anthropic):
    anthropic.queue(
        "claude-haiku-4-5",
        Reply(usage={"cache_creation_input_tokens": None, "cache_read_input_tokens": None}),
    )
    completion = RUNNERS["anthropic"](request())
    assert (completion.input_tokens, completion.output_tokens) == (20, 30)


@pytest.mark.parametrize(
    "reply, code, retriable",
    [
        (anthropic_error(400, "invalid_request_error"), "provider_bad_request", False),
        (anthropic_error(401, "authentication_error"), "provider_auth", False),
        (anthropic_error(403, "permission_error"), "provider_auth", False),
        (anthropic_error(404, "not_found_error"), "model_not_found", False),
        (anthropic_error(413, "request_too_large"), "provider_bad_request", False),
        (anthropic_error(429, "rate_limit_error"), "provider_rate_limited", True),
        (
            anthropic_error(429, "rate_limit_error", error_code="enforced_spend_limit_reached"),
            "provider_spend_limit",
            False,
        ),
        (anthropic_error(500, "api_error"), "provider_unavailable", True),
        (anthropic_error(503, "api_error"), "provider_unavailable", True),
        (anthropic_error(529, "overloaded_error"), "provider_unavailable", True),
    ],
)
def test_anthropic_errors_map_to_contract_codes(anthropic, reply, code, retriable):
    anthropic.queue("claude-haiku-4-5", reply)
    with pytest.raises(ProviderError) as exc:
        RUNNERS["anthropic"](request())
    assert (exc.value.code, exc.value.retriable) == (code, retriable)
    assert len(anthropic.calls) == 1  # the SDK's own retries are off


def test_anthropic_retry_after_is_reported_not_slept(anthropic):
    reply = anthropic_error(429, "rate_limit_error")
    reply.headers = {"retry-after": "3600"}
    anthropic.queue("claude-haiku-4-5", reply)
    started = time.monotonic()
    with pytest.raises(ProviderError) as exc:
        RUNNERS["anthropic"](request())
    assert exc.value.retry_after == 3600
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "usage",
    [{"input_tokens": -1}, {"output_tokens": -5}, {"output_tokens": 10**12}, {"cache_read_input_tokens": -3}],
)
def test_anthropic_invalid_usage(anthropic, usage):
    anthropic.queue("claude-haiku-4-5", Reply(usage=usage))
    with pytest.raises(ProviderError) as exc:
        RUNNERS["anthropic"](request())
    assert exc.value.code == "invalid_provider_usage"


@pytest.mark.parametrize(
    "body",
    [
        {"type": "message", "content": [{"type": "text", "text": "no usage"}]},
        {"type": "message", "content": [], "usage": {"input_tokens": 3}},
        {
            "type": "message",
            "content": [{"type": "text", "text": 7}],
            "usage": {"input_tokens": 3, "output_tokens": 4},
        },
        {"type": "message", "content": [], "usage": {"input_tokens": "3", "output_tokens": 4}},
        {"type": "message", "content": [], "usage": [3, 4]},
        {
            "type": "message",
            "content": [],
            "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": ""},
        },
        {
            "type": "message",
            "content": [],
            "usage": {"input_tokens": 3, "output_tokens": 4, "cache_creation_input_tokens": False},
        },
    ],
)
def test_anthropic_unreadable_answer(anthropic, body):
    anthropic.queue("claude-haiku-4-5", Reply(body=body))
    with pytest.raises(ProviderError) as exc:
        RUNNERS["anthropic"](request())
    assert exc.value.code == "invalid_provider_usage"


def test_anthropic_text_is_the_text_blocks_joined(anthropic):
    blocks = [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "one, "},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
        {"type": "text", "text": "two \u00e9"},
    ]
    body = {
        "type": "message",
        "role": "assistant",
        "content": blocks,
        "usage": {"input_tokens": 11, "output_tokens": 4},
    }
    anthropic.queue("claude-haiku-4-5", Reply(body=body))
    completion = RUNNERS["anthropic"](request())
    assert (completion.text, completion.input_tokens, completion.output_tokens) == ("one, two \u00e9", 11, 4)


def test_anthropic_reads_a_fragment_larger_than_its_reads_whole(anthropic):
    """A fragment spread over many reads (the loop's transport reads at most 256 KiB at a time,
    the HTTP client 64 KiB) arrives whole and in order."""
    big = "".join(chr(0x41 + i % 26) for i in range(300 * 1024 + 17))
    anthropic.queue("claude-haiku-4-5", Reply(chunks=[big, " end"]))
    fragments = []
    call = Call(on_delta=fragments.append)
    completion = RUNNERS["anthropic"](replace(request(), call=call))
    assert completion.text == big + " end" == "".join(fragments)


def test_anthropic_timeout(anthropic):
    anthropic.queue("claude-haiku-4-5", Reply(delay=2))
    started = time.monotonic()
    with pytest.raises(ProviderError) as exc:
        RUNNERS["anthropic"](request(timeout=0.5))
    assert exc.value.code == "timeout"
    assert time.monotonic() - started < 1.8


def test_anthropic_connection_refused_is_retriable(settings, providers):
    settings.ANTHROPIC_BASE_URL = "http://127.0.0.1:9"
    with pytest.raises(ProviderError) as exc:
        RUNNERS["anthropic"](request())
    assert (exc.value.code, exc.value.retriable) == ("provider_unavailable", True)


def test_anthropic_not_configured(settings, providers):
    settings.ANTHROPIC_API_KEY = ""
    with pytest.raises(ProviderError) as exc:
        RUNNERS["anthropic"](request())
    assert exc.value.code == "provider_not_configured"


def test_anthropic_client_has_no_sdk_retries(providers):
    client = anthropic_runner._client()
    assert client.max_retries == 0


def test_anthropic_client_has_no_spans_unless_asked(settings, providers):
    assert anthropic_runner._client()._tracer is None
    settings.ANTHROPIC_OPEN_TELEMETRY = True
    assert anthropic_runner._client()._open_telemetry["traces"]["enabled"]


def test_ollama_success(ollama):
    completion = RUNNERS["ollama"](request(model="llama3.2"))
    assert completion.text == "local echo: hello"
    assert (completion.input_tokens, completion.output_tokens) == (12, 8)
    path, payload, _ = ollama.calls[-1]
    assert path == "/api/chat"
    assert payload["model"] == "llama3.2"
    assert payload["stream"] is False
    assert payload["messages"] == [
        {"role": "system", "content": "sys prompt"},
        {"role": "user", "content": "hello"},
    ]
    assert payload["options"] == {"num_predict": 64}


def test_ollama_cached_prompt_without_prompt_eval_count(ollama):
    ollama.queue(
        "llama3.2",
        Reply(body={"message": {"role": "assistant", "content": "x"}, "done": True, "eval_count": 3}),
    )
    completion = RUNNERS["ollama"](request(model="llama3.2"))
    assert (completion.input_tokens, completion.output_tokens) == (0, 3)


@pytest.mark.parametrize(
    "reply, code, retriable",
    [
        (Reply(status=404, body={"error": "model 'x' not found"}), "model_not_found", False),
        (Reply(status=400, body={"error": "bad"}), "provider_bad_request", False),
        (Reply(status=500, body={"error": "boom"}), "provider_unavailable", True),
        (Reply(status=503, body={"error": "busy"}), "provider_unavailable", True),
        (Reply(status=429, body={"error": "slow down"}), "provider_rate_limited", True),
        (
            Reply(body={"message": {"content": "x"}, "prompt_eval_count": -1, "eval_count": 2}),
            "invalid_provider_usage",
            False,
        ),
        (
            Reply(body={"message": {"content": "x"}, "prompt_eval_count": 1, "eval_count": "2"}),
            "invalid_provider_usage",
            False,
        ),
        (Reply(body={"message": {"content": "x"}, "prompt_eval_count": 1}), "invalid_provider_usage", False),
        (Reply(body={"nothing": True}), "invalid_provider_usage", False),
    ],
)
def test_ollama_errors(ollama, reply, code, retriable):
    ollama.queue("llama3.2", reply)
    with pytest.raises(ProviderError) as exc:
        RUNNERS["ollama"](request(model="llama3.2"))
    assert (exc.value.code, exc.value.retriable) == (code, retriable)


def test_ollama_that_never_answers_times_out(settings, providers):
    silent = SilentServer()
    settings.OLLAMA_BASE_URL = silent.url
    try:
        started = time.monotonic()
        with pytest.raises(ProviderError) as exc:
            RUNNERS["ollama"](request(model="llama3.2", timeout=0.5))
        assert exc.value.code == "timeout"
        assert time.monotonic() - started < 2
    finally:
        silent.close()


def test_ollama_unreachable_is_retriable(settings, providers):
    settings.OLLAMA_BASE_URL = "http://127.0.0.1:9"
    with pytest.raises(ProviderError) as exc:
        RUNNERS["ollama"](request(model="llama3.2"))
    assert (exc.value.code, exc.value.retriable) == ("provider_unavailable", True)


def test_every_catalog_provider_has_a_runner():
    from routing.models import Provider

    assert set(RUNNERS) == set(Provider.values)
