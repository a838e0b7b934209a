"""The HTTP API routes on a real FastAPI app (Starlette's test client), over the tiny model."""

from __future__ import annotations

import base64
import threading

import pytest

pytest.importorskip("fastapi")
from fastapi import FastAPI
from fastapi.testclient import TestClient

from memguard.api import MAX_PROMPT_CHARS, MAX_PROMPTS, PREFIX, register_routes
from memguard.calibrate import CalibrationStore
from memguard.service import PipelineService

ROUTES = [("get", "version"), ("get", "schema"), ("post", "score"), ("get", "calibration"), ("post", "calibration")]


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def service(tiny, tmp_path):
    return PipelineService(tiny, CalibrationStore(tmp_path / "calibration.json"), steps=10)


def client(service, auth=None) -> TestClient:
    app = FastAPI()
    register_routes(app, lambda: service, auth)
    return TestClient(app)


def test_routes_require_the_hosts_credentials_when_set(service):
    c = client(service, "alice:secret,bob:pw2")
    for method, route in ROUTES:
        kwargs = {"json": {"prompts": ["a cat"]}} if method == "post" else {}
        assert getattr(c, method)(f"{PREFIX}/{route}", **kwargs).status_code == 401, route
        assert getattr(c, method)(f"{PREFIX}/{route}", headers=basic("alice", "nope"), **kwargs).status_code == 401
    ok = c.get(f"{PREFIX}/version", headers=basic("bob", "pw2"))
    assert ok.status_code == 200 and ok.json()["model"] == service.model_id()


def test_open_without_api_auth_and_scores(service):
    c = client(service)
    r = c.post(f"{PREFIX}/score", json={"prompts": ["a red circle", "a blue square"], "seeds": 2})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["prompt"] for x in results] == ["a red circle", "a blue square"]
    assert all(len(x["scores"]) == 2 and x["score"] > 0 for x in results)
    explained = c.post(f"{PREFIX}/score", json={"prompts": ["a red circle"], "explain": True}).json()["results"][0]
    assert [w["text"] for w in explained["words"]] == ["a", "red", "circle"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'{"prompts": "a cat"}', 422),
        (b'{"prompts": [1, 2]}', 422),
        (b'{"prompts": []}', 422),
        (b'{"prompts": ["a"], "seeds": 0}', 422),
        (b'{"prompts": ["a"], "seeds": true}', 422),
        (b'{"prompts": ["a"], "explain": "yes"}', 422),
    ],
)
def test_malformed_requests_get_a_clear_4xx(service, body, status):
    r = client(service).post(f"{PREFIX}/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and r.json()["error"]


def test_request_size_bounds(service):
    c = client(service)
    r = c.post(f"{PREFIX}/score", json={"prompts": ["a"] * (MAX_PROMPTS + 1)})
    assert r.status_code == 413 and str(MAX_PROMPTS) in r.json()["error"]
    r = c.post(f"{PREFIX}/score", json={"prompts": ["x" * (MAX_PROMPT_CHARS + 1)]})
    assert r.status_code == 413
    r = c.post(f"{PREFIX}/score", content=b"{" + b" " * 300_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_calibration_round_trip(service):
    c = client(service)
    before = c.get(f"{PREFIX}/calibration").json()
    assert before["threshold"] is None and before["source"] == "this model is not calibrated yet"
    r = c.post(f"{PREFIX}/calibration", json={"fpr": 0.1, "prompts": [f"a shape number {i}" for i in range(12)]})
    assert r.status_code == 200 and r.json()["n"] == 12
    after = c.get(f"{PREFIX}/calibration").json()
    assert after["threshold"] == pytest.approx(r.json()["threshold"])
    assert after["source"] == "calibrated by the user at FPR 0.1"
    assert c.post(f"{PREFIX}/calibration", json={"fpr": 2}).status_code == 422


def test_concurrent_clients_get_their_own_results(service):
    """Three clients at once each get exactly what their request gets when it is made alone: per-seed scores, mean,
    threshold, verdict and the explained words with their significance (one of the three is flagged)."""
    from memguard.calibrate import Calibration

    c = client(service)
    prompts = ("a red circle", "a green cross", "two squares")
    request = {"seeds": 2, "explain": True}
    audit = c.post(f"{PREFIX}/score", json={"prompts": list(prompts), "seeds": 2}).json()["results"]
    means = sorted(r["score"] for r in audit)
    service.store.put(service.model_id(), Calibration(threshold=(means[1] + means[2]) / 2, fpr=0.1, n_prompts=3))
    out: dict[str, dict] = {}

    def call(prompt: str) -> None:
        out[prompt] = c.post(f"{PREFIX}/score", json={"prompts": [prompt], **request}).json()

    threads = [threading.Thread(target=call, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = {p: c.post(f"{PREFIX}/score", json={"prompts": [p], **request}).json() for p in prompts}
    assert sum(alone[p]["results"][0]["flagged"] for p in prompts) == 1
    for p in prompts:
        (got,), (expected,) = out[p]["results"], alone[p]["results"]
        assert got["prompt"] == p and got["threshold"] == expected["threshold"] == out[p]["threshold"]
        assert got["flagged"] == expected["flagged"]
        assert got["scores"] == pytest.approx(expected["scores"], rel=1e-5)
        assert got["score"] == pytest.approx(expected["score"], rel=1e-5)
        assert [(w["text"], w["start"], w["end"]) for w in got["words"]] == [
            (w["text"], w["start"], w["end"]) for w in expected["words"]
        ]
        assert [w["value"] for w in got["words"]] == pytest.approx([w["value"] for w in expected["words"]], rel=1e-4)


def test_panel_route_renders_escaped_results_without_credentials(service):
    c = client(service, "alice:secret")
    payload = {
        "results": [
            {
                "index": 0,
                "seed": 1,
                "prompt": "<img src=x onerror=alert(1)>",
                "score": 2.0,
                "threshold": 1.0,
                "flagged": True,
                "reason": "",
                "words": [],
                "mitigation": None,
            }
        ]
    }
    import json as _json

    r = c.post(f"{PREFIX}/panel", json={"payload": _json.dumps(payload), "target": "txt2img_prompt"})
    assert r.status_code == 200
    html = r.json()["html"]
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert c.post(f"{PREFIX}/panel", json={"payload": "not json"}).status_code == 422
