"""Black-box fixtures: start four relay-mock upstreams (healthy, broken, parallel tool
calls, rate-limited) and a relay-gateway in front of them, and official SDK clients of
the three client dialects (OpenAI, Anthropic, Gemini).

The healthy, parallel and rate-limited mocks are each reached through three channels,
one per upstream dialect (openai-compatible, anthropic, gemini), so that tests
parametrised over UPSTREAM_PRESETS / PARALLEL_PRESETS / LIMITED_PRESETS cover every
(client dialect, upstream dialect) pair.

Binaries come from RELAY_GATEWAY_BIN / RELAY_MOCK_BIN, defaulting to the debug builds in
target/debug (build them first with `cargo build -p relay-gateway -p relay-mock`).
A missing binary is a failure, never a skip.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN_DIR = REPO_ROOT / "target" / "debug"

API_KEY = "rk-test"
HEALTH_TIMEOUT_S = 20.0
MOCK_START_TIMEOUT_S = 20.0
HEALTHY_TOKENS = 8

# One channel per upstream dialect, all on the healthy mock, each serving its own model;
# a preset named after each. Tests parametrise over these to cover every
# (client dialect, upstream dialect) pair.
UPSTREAM_PRESETS = {
    # preset: (channel id, model the channel serves, upstream dialect)
    "via-openai": ("up-openai", "m-openai", "openai-compatible"),
    "via-anthropic": ("up-anthropic", "m-anthropic", "anthropic"),
    "via-gemini": ("up-gemini", "m-gemini", "gemini"),
}

# The mock's deterministic word list starts like this; one word per completion token.
MOCK_WORDS = "Hello from the relay mock upstream. This is a deterministic completion".split()
EXPECTED_TEXT = " ".join(MOCK_WORDS[:HEALTHY_TOKENS])  # "Hello from the relay mock upstream. This is"
PRESETS = list(UPSTREAM_PRESETS)

# A second mock answers tool requests with PARALLEL_TOOL_CALLS calls at once (and
# PARALLEL_TOKENS words of text), behind the same three upstream dialects.
PARALLEL_TOKENS = 5
PARALLEL_TOOL_CALLS = 2
PARALLEL_PRESETS = {
    "parallel-via-openai": ("par-openai", "p-openai", "openai-compatible"),
    "parallel-via-anthropic": ("par-anthropic", "p-anthropic", "anthropic"),
    "parallel-via-gemini": ("par-gemini", "p-gemini", "gemini"),
}

# A third mock answers every request with 429 (in the route's dialect), behind the same
# three upstream dialects: the client must get a 429 in its own dialect.
LIMITED_PRESETS = {
    "limited-via-openai": ("lim-openai", "l-openai", "openai-compatible"),
    "limited-via-anthropic": ("lim-anthropic", "l-anthropic", "anthropic"),
    "limited-via-gemini": ("lim-gemini", "l-gemini", "gemini"),
}


def mock_tool_tokens(name: str, arguments: str) -> int:
    """Completion tokens the mock reports (in every dialect) for one tool call: a token per
    4 characters of the name plus the compact JSON arguments, at least 1."""
    return max(1, math.ceil((len(name) + len(arguments)) / 4))


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def request_log(log_path: Path, request_id: str, want: str, timeout: float = 5.0) -> list[str]:
    """The gateway log lines of one request, waiting until one contains `want`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [ANSI.sub("", l) for l in log_path.read_text(errors="replace").splitlines()]
        mine = [l for l in lines if request_id in l]
        if any(want in l for l in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


def settled(log_path: Path, request_id: str) -> dict[str, str]:
    """The fields of the gateway's `request settled` line for one request (quotes stripped),
    e.g. {"channel": "up-openai", "input_tokens": "3", "output_tokens": "8", ...}."""
    mine = request_log(log_path, request_id, "request settled")
    lines = [l for l in mine if "request settled" in l]
    assert len(lines) == 1, "\n".join(mine) or f"no log line for {request_id}"
    line = lines[0].split("request settled", 1)[1]
    return {k: v.strip('"') for k, v in _FIELD.findall(line)}


def _binary(env_name: str, default_name: str) -> Path:
    path = Path(os.environ.get(env_name) or (DEFAULT_BIN_DIR / default_name))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{default_name} binary not found or not executable at {path}. "
            f"Build it with `cargo build -p relay-gateway -p relay-mock` "
            f"or point {env_name} at it.",
            pytrace=False,
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _tail(path: Path, limit: int = 8000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return text[-limit:]


class _Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.files: list = []

    def start(self, args: list[str], log_path: Path) -> subprocess.Popen:
        log = open(log_path, "wb")
        self.files.append(log)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        # Gateway first (started last), then the mocks.
        for proc in reversed(self.procs):
            _stop(proc)
        for f in self.files:
            f.close()


def _start_mock(procs: _Processes, mock_bin: Path, log_path: Path, extra: list[str]) -> str:
    """Start a mock on a free port; return its base URL (ending in /v1)."""
    last_error = ""
    for _ in range(5):  # a port picked free may be taken in between: retry on a new one
        port = _free_port()
        proc = procs.start([str(mock_bin), "--listen", f"127.0.0.1:{port}", *extra], log_path)
        deadline = time.monotonic() + MOCK_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "relay-mock listening on" in _tail(log_path):
                return f"http://127.0.0.1:{port}/v1"
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        last_error = _tail(log_path)
        _stop(proc)
    pytest.fail(f"relay-mock {' '.join(extra)} did not start; its output:\n{last_error}", pytrace=False)


def _origin(v1_url: str) -> str:
    """`http://HOST:PORT/v1` -> `http://HOST:PORT`."""
    assert v1_url.endswith("/v1"), v1_url
    return v1_url[: -len("/v1")]


def _dialect_channels(mock_url: str, presets: dict) -> str:
    """A channel per upstream dialect on the mock at `mock_url`, and a preset for each."""
    origin = _origin(mock_url)
    base_urls = {
        "openai-compatible": mock_url,  # the adapter appends /chat/completions
        "anthropic": origin,  # the adapter appends /v1/messages
        "gemini": origin + "/v1beta",  # the adapter appends /models/{model}:generateContent
    }
    out = []
    for preset, (channel, model, provider) in presets.items():
        out.append(
            f"""
[[channels]]
id = "{channel}"
provider = "{provider}"
base_url = "{base_urls[provider]}"
allow_private_network = true
api_keys = ["x"]
models = ["{model}"]

[[presets]]
name = "{preset}"
description = "{channel}: the mock through its {provider} dialect"

[[presets.items]]
channels = ["{channel}"]
model = "{model}"
strategy = "weighted"
"""
        )
    return "".join(out)


def _config(healthy_url: str, broken_url: str, parallel_url: str, limited_url: str) -> str:
    channels = (
        _dialect_channels(healthy_url, UPSTREAM_PRESETS)
        + _dialect_channels(parallel_url, PARALLEL_PRESETS)
        + _dialect_channels(limited_url, LIMITED_PRESETS)
    )
    return channels + f"""
[server]
max_body_bytes = 65536

[[keys]]
name = "t"
key = "{API_KEY}"

[[channels]]
id = "healthy"
provider = "openai-compatible"
base_url = "{healthy_url}"
allow_private_network = true
api_keys = ["sk-x"]
models = ["gpt-test", "text-embedding-test"]

[[channels]]
id = "broken"
provider = "openai-compatible"
base_url = "{broken_url}"
allow_private_network = true
api_keys = ["sk-x"]
models = ["gpt-test"]

[[presets]]
name = "failover"
description = "broken first, then healthy"

[[presets.items]]
channels = ["broken"]
model = "gpt-test"
strategy = "failover"
retry = {{ max_attempts = 2, backoff_base_ms = 10, backoff_max_ms = 50, max_retry_after_ms = 1000 }}

[[presets.items]]
channels = ["healthy"]
model = "gpt-test"
strategy = "failover"
retry = {{ max_attempts = 2, backoff_base_ms = 10, backoff_max_ms = 50, max_retry_after_ms = 1000 }}

[[presets]]
name = "plain"

[[presets.items]]
channels = ["healthy"]
model = "gpt-test"
strategy = "weighted"

[defaults.retry]
max_attempts = 3
backoff_base_ms = 10
backoff_max_ms = 50
max_retry_after_ms = 1000
"""


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path) -> bool:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            r = httpx.get(f"{url}/healthz", timeout=1.0)
            if r.status_code == 200 and r.json() == {"status": "ok"}:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def relay_stack(tmp_path_factory):
    gateway_bin = _binary("RELAY_GATEWAY_BIN", "relay-gateway")
    mock_bin = _binary("RELAY_MOCK_BIN", "relay-mock")
    workdir = tmp_path_factory.mktemp("relay")
    procs = _Processes()
    try:
        healthy_url = _start_mock(procs, mock_bin, workdir / "mock-healthy.log", ["--tokens", str(HEALTHY_TOKENS)])
        broken_url = _start_mock(procs, mock_bin, workdir / "mock-broken.log", ["--status", "500"])
        parallel_url = _start_mock(
            procs,
            mock_bin,
            workdir / "mock-parallel.log",
            ["--tokens", str(PARALLEL_TOKENS), "--tool-calls", str(PARALLEL_TOOL_CALLS)],
        )
        limited_url = _start_mock(procs, mock_bin, workdir / "mock-limited.log", ["--status", "429"])
        config_path = workdir / "gateway.toml"
        config_path.write_text(_config(healthy_url, broken_url, parallel_url, limited_url))
        log_path = workdir / "gateway.log"

        url = None
        last_log = ""
        exit_note = ""
        for _ in range(3):
            port = _free_port()
            candidate = f"http://127.0.0.1:{port}"
            proc = procs.start(
                [str(gateway_bin), "serve", "--config", str(config_path), "--listen", f"127.0.0.1:{port}"],
                log_path,
            )
            if _wait_healthy(candidate, proc, log_path):
                url = candidate
                break
            last_log = _tail(log_path)
            exit_note = f" (it exited with code {proc.returncode})" if proc.poll() is not None else ""
            _stop(proc)
            if "cannot listen" not in last_log:
                break  # not a port race: no point retrying
        if url is None:
            pytest.fail(
                f"relay-gateway did not answer /healthz within {HEALTH_TIMEOUT_S:.0f}s{exit_note}.\n"
                f"config ({config_path}):\n{config_path.read_text()}\n"
                f"gateway log ({log_path}):\n{last_log}",
                pytrace=False,
            )
        yield {"url": url, "log_path": log_path, "config_path": config_path, "workdir": workdir}
    finally:
        procs.stop_all()


@pytest.fixture(scope="session")
def gateway_url(relay_stack) -> str:
    return relay_stack["url"]


@pytest.fixture(scope="session")
def gateway_log_path(relay_stack) -> Path:
    return relay_stack["log_path"]


@pytest.fixture(scope="session")
def client(gateway_url) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gateway_url + "/v1", api_key=API_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


@pytest.fixture(scope="session")
def anthropic_client(gateway_url) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=gateway_url, api_key=API_KEY, max_retries=0, timeout=20)
    yield c
    c.close()


def make_genai_client(gateway_url: str, api_key: str = API_KEY) -> genai.Client:
    """A google-genai client (Gemini Developer API flavour) aimed at the gateway, no retries."""
    return genai.Client(
        vertexai=False,
        api_key=api_key,
        http_options=genai_types.HttpOptions(
            base_url=gateway_url,
            api_version="v1beta",
            timeout=20_000,
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        ),
    )


@pytest.fixture(scope="session")
def genai_client(gateway_url) -> genai.Client:
    c = make_genai_client(gateway_url)
    yield c
    c.close()


@pytest.fixture
def gateway_log(gateway_log_path):
    """A callable returning the gateway log's tail (for assertion messages)."""
    return lambda limit=4000: _tail(gateway_log_path, limit)
