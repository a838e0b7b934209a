"""The HTTP API against hostile clients, on a real server (uvicorn in a thread, requests with a timeout, so a hang
fails instead of stalling the suite): every route enumerated from the app, credentials, malformed and oversized
requests, fuzzed bodies, concurrent clients, and the WebUI service's use of the host's generation lock.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
import httpx
import uvicorn
from fastapi import FastAPI
from hostile_prompts import INJECTIONS, examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memguard.api import (
    MAX_BODY,
    MAX_CALIBRATION_PROMPTS,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    PREFIX,
    register_routes,
)
from memguard.calibrate import CalibrationStore
from memguard.service import PipelineService

AUTH = "alice:s3cret,bob:pw:with:colons"
TIMEOUT_S = 60  # a hang fails the test instead of the suite
PUBLIC = {("POST", f"{PREFIX}/panel")}  # formats results the page already holds: no model, no credentials
BODIES = {
    f"{PREFIX}/score": {"prompts": ["a red circle"]},
    f"{PREFIX}/calibration": {"fpr": 0.25, "prompts": [f"a shape {i}" for i in range(8)]},
    f"{PREFIX}/panel": {"payload": json.dumps({"results": []})},
}


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


RIGHT = basic("bob", "pw:with:colons")
WRONG = [
    {},
    basic("alice", "nope"),
    basic("mallory", "s3cret"),
    basic("alice", "s3cret\x00"),
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
    {"Authorization": "Bearer s3cret"},
    {"Authorization": "alice:s3cret"},
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A FastAPI app with memguard's routes, served by uvicorn on a thread; ``client`` talks to it over TCP."""

    def __init__(self, factory, auth: str | None):
        self.app = FastAPI()
        register_routes(self.app, factory, auth)
        port = _free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT_S
        while not self.server.started and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S)

    def routes(self) -> list[tuple[str, str]]:
        return sorted(
            (method, route.path)
            for route in self.app.routes
            if route.path.startswith(PREFIX)
            for method in route.methods
        )

    def call(self, method: str, path: str, headers: dict | None = None) -> httpx.Response:
        body = BODIES.get(path) if method == "POST" else None
        return self.client.request(method, path, json=body, headers=headers or {})

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(TIMEOUT_S)


@pytest.fixture(scope="module")
def service(tiny, tmp_path_factory):
    return PipelineService(tiny, CalibrationStore(tmp_path_factory.mktemp("store") / "c.json"), steps=4)


@pytest.fixture(scope="module")
def served(service) -> Iterator[Served]:
    s = Served(lambda: service, AUTH)
    yield s
    s.close()


def assert_clear_4xx(response: httpx.Response, status: int | None = None) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert status is None or response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    assert isinstance(message, str) and len(message) > 10


# --- credentials -----------------------------------------------------------------------------------------------------
def test_every_route_but_the_panel_needs_the_hosts_credentials(served):
    routes = served.routes()
    assert len(routes) >= 6 and set(PUBLIC) <= set(routes)
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        for headers in WRONG:
            response = served.call(method, path, headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Basic" and "model" not in response.text
        assert served.call(method, path, RIGHT).status_code == 200, (method, path)
        assert served.call(method, path, {"Authorization": "basic" + RIGHT["Authorization"][5:]}).status_code == 200


def test_the_panel_route_needs_no_credentials_and_no_model():
    def no_model():
        raise AssertionError("the panel route must not ask for the model")

    served = Served(no_model, AUTH)
    try:
        payload = {"results": [{"index": 0, "prompt": INJECTIONS[0], "score": 2.0, "threshold": 1.0, "flagged": True}]}
        response = served.client.post(f"{PREFIX}/panel", json={"payload": json.dumps(payload)})
        assert response.status_code == 200 and "&lt;img src=x" in response.json()["html"]
    finally:
        served.close()


# --- malformed and oversized requests --------------------------------------------------------------------------------
SCORE_BODIES = [
    {"prompts": "a cat"},
    {"prompts": 3},
    {"prompts": None},
    {"prompts": [["a cat"]]},
    {"prompts": [None]},
    {"prompts": {"a": "cat"}},
    {"prompts": ["a"], "seeds": -1},
    {"prompts": ["a"], "seeds": 10**30},
    {"prompts": ["a"], "seeds": 2.0},
    {"prompts": ["a"], "seeds": "2"},
    {"prompts": ["a"], "seeds": None},
    {"prompts": ["a"], "explain": 1},
    {"prompts": ["a"] * (MAX_PROMPTS + 1)},
    {"prompts": ["x" * (MAX_PROMPT_CHARS + 1)]},
    {"prompts": ["a \ud800 cat"]},  # an unpaired surrogate used to reach the tokenizer: a 500
]
CALIBRATION_BODIES = [
    {"fpr": 0},
    {"fpr": -0.1},
    {"fpr": 0.51},
    {"fpr": "0.1"},
    {"fpr": True},
    {"fpr": None},
    {"fpr": 0.1, "prompts": "a cat"},
    {"fpr": 0.1, "prompts": []},
    {"fpr": 0.1, "prompts": ["a"] * (MAX_CALIBRATION_PROMPTS + 1)},
    {"fpr": 0.1, "prompts": ["a", "\udfff"]},
]
RAW_BODIES = [
    b"{not json",
    b"[1, 2]",
    b'"a string"',
    b"null",
    b"\xff\xfe{}",
    b'{"prompts": ["a"], "seeds": NaN}',
    b'{"fpr": Infinity}',
    b"[" * 100_000 + b"]" * 100_000,  # nests past the JSON parser's recursion limit, under the size limit
]


@pytest.mark.parametrize("body", SCORE_BODIES, ids=range(len(SCORE_BODIES)))
def test_malformed_score_requests_get_a_clear_4xx(served, body):
    assert_clear_4xx(served.client.post(f"{PREFIX}/score", json=body, headers=RIGHT))


@pytest.mark.parametrize("body", CALIBRATION_BODIES, ids=range(len(CALIBRATION_BODIES)))
def test_malformed_calibration_requests_get_a_clear_4xx(served, body):
    assert_clear_4xx(served.client.post(f"{PREFIX}/calibration", json=body, headers=RIGHT))


@pytest.mark.parametrize("path", ["score", "calibration", "panel"])
@pytest.mark.parametrize("raw", RAW_BODIES, ids=range(len(RAW_BODIES)))
def test_bodies_that_are_not_a_json_object_get_a_clear_4xx(served, path, raw):
    headers = {**RIGHT, "Content-Type": "application/json"}
    assert_clear_4xx(served.client.post(f"{PREFIX}/{path}", content=raw, headers=headers))


@pytest.mark.parametrize("path", ["score", "calibration", "panel"])
@pytest.mark.parametrize("kind", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_post_must_say_it_is_json(served, path, kind):
    """Simple requests (no preflight): a web page could send them cross-site; they are refused before any work."""
    headers = {**RIGHT, **({"Content-Type": kind} if kind else {})}
    assert_clear_4xx(
        served.client.post(f"{PREFIX}/{path}", content=json.dumps(BODIES[f"{PREFIX}/{path}"]), headers=headers), 415
    )


@pytest.mark.parametrize("path", ["score", "calibration", "panel"])
def test_oversized_bodies_are_refused_announced_or_streamed(served, path):
    headers = {**RIGHT, "Content-Type": "application/json"}
    big = b'{"prompts": ["' + b"a" * (MAX_BODY + 10) + b'"]}'
    assert_clear_4xx(served.client.post(f"{PREFIX}/{path}", content=big, headers=headers), 413)

    def chunks():  # no Content-Length: the server must stop reading by itself
        yield b'{"prompts": ["'
        for _ in range(64):
            yield b"a" * (MAX_BODY // 16)
        yield b'"]}'

    assert_clear_4xx(served.client.post(f"{PREFIX}/{path}", content=chunks(), headers=headers), 413)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
RESULT_KEYS = ["index", "seed", "prompt", "score", "threshold", "flagged", "reason", "words", "mitigation"]
WORD = st.fixed_dictionaries({}, optional={k: JSON for k in ("start", "end", "text", "value", "normalized")})
RESULT = st.fixed_dictionaries(
    {},
    optional={
        **{k: JSON for k in RESULT_KEYS},
        "words": st.lists(WORD | JSON, max_size=3),
        "mitigation": st.dictionaries(
            st.sampled_from(["strategy", "score_before", "score_after", "notes", "unet_forwards", "seconds"]), JSON
        )
        | JSON,
    },
)
FUZZ = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(RESULT | JSON, max_size=3), JSON)
@example(  # a significance past int()'s range used to escape as a 500
    [
        {
            "prompt": "cat",
            "score": 2.0,
            "threshold": 1.0,
            "flagged": True,
            "words": [{"start": 0, "end": 3, "normalized": 1e308}],
        }
    ],
    "txt2img_prompt",
)
@example([{"score": 10**400, "threshold": 1, "flagged": True, "prompt": "x"}], None)  # no float holds it: was a 500
def test_the_panel_never_fails_on_any_payload(served, results, target):
    payload = json.dumps({"results": results})
    response = served.client.post(f"{PREFIX}/panel", json={"payload": payload, "target": target})
    if response.status_code == 200:
        assert "<script" not in response.json()["html"]
    else:  # NaN and Infinity (which Python writes) are not JSON
        assert_clear_4xx(response)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["prompts", "seeds", "explain", "fpr"]), JSON, max_size=3))
def test_score_and_calibration_answer_any_json_object_without_a_server_error(served, body):
    for path, request in (("score", body), ("calibration", {"prompts": ["a"], **body})):  # not the bundled list
        response = served.client.post(f"{PREFIX}/{path}", json=request, headers=RIGHT)
        if response.status_code != 200:
            assert_clear_4xx(response)


# --- concurrency -----------------------------------------------------------------------------------------------------
def test_concurrent_clients_each_get_their_own_results(served):
    prompts = ["a red circle", "a green cross, (bold:1.3)", INJECTIONS[1], "two squares BREAK on grass"]
    alone = {
        p: served.client.post(f"{PREFIX}/score", json={"prompts": [p], "explain": True}, headers=RIGHT).json()
        for p in prompts
    }
    start = threading.Barrier(len(prompts))
    got: dict[str, dict] = {}

    def call(prompt: str) -> None:
        with httpx.Client(base_url=served.client.base_url, timeout=TIMEOUT_S) as client:
            start.wait()
            got[prompt] = client.post(f"{PREFIX}/score", json={"prompts": [prompt], "explain": True}, headers=RIGHT)

    threads = [threading.Thread(target=call, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert set(got) == set(prompts)
    for prompt, response in got.items():
        assert response.status_code == 200
        assert response.json() == alone[prompt]
