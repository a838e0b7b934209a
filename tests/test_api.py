"""The HTTP API routes on a real FastAPI app (Starlette's test client), over the tiny model."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest

pytest.importorskip("fastapi")
from fastapi import FastAPI
from fastapi.testclient import TestClient

from memguard import __version__, api
from memguard.api import MAX_PROMPT_CHARS, MAX_PROMPTS, PREFIX, register_routes
from memguard.calibrate import CalibrationStore
from memguard.hosts.families import NotApplicable
from memguard.hosts.request import FIELDS as OPTIONS
from memguard.service import PipelineService, benign_prompts
from memguard.ui.panel import render_panel

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
    r = c.post(f"{PREFIX}/panel", json={"payload": json.dumps(payload), "target": "txt2img_prompt"})
    assert r.status_code == 200
    html = r.json()["html"]
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert c.post(f"{PREFIX}/panel", json={"payload": "not json"}).status_code == 422


# --- the field checks and the handlers, without a model -------------------------------------------------------------
class FakeService:
    """A service that records what the handlers ask of it."""

    def __init__(self, fail: Exception | None = None):
        self.calls: list[tuple] = []
        self.fail = fail

    def model_id(self) -> str:
        return "model-1"

    def threshold(self) -> float:
        return 2.5

    def threshold_source(self) -> str:
        return "manual threshold 2.5"

    def audit(self, prompts, seeds):
        if self.fail is not None:
            raise self.fail
        self.calls.append(("audit", prompts, seeds))
        return [{"prompt": p} for p in prompts]

    def analyze(self, prompt, seeds):
        self.calls.append(("analyze", prompt, seeds))
        return {"prompt": prompt, "words": []}

    def calibrate(self, prompts, fpr):
        self.calls.append(("calibrate", prompts, fpr))
        return {"threshold": 1.5, "fpr": fpr, "n": len(prompts)}


def refused(check, value) -> tuple[int, str]:
    with pytest.raises(api.BadRequest) as raised:
        check(value)
    return raised.value.status, str(raised.value)


def test_credentials_from_api_auth():
    assert api.parse_credentials("alice:secret, bob:pw:with:colons,nocolon,") == {
        "alice": "secret",
        "bob": "pw:with:colons",
    }
    assert api.parse_credentials(None) == {} and api.parse_credentials("") == {}


def test_authorized_takes_only_the_basic_credentials_of_a_known_user():
    creds = {"alice": "secret"}
    assert api.authorized(None, {}) and api.authorized("anything", {})  # no --api-auth: open
    assert api.authorized(basic("alice", "secret")["Authorization"], creds)
    assert api.authorized("bAsIc " + base64.b64encode(b"alice:secret").decode(), creds)  # the scheme in any case
    assert not api.authorized(None, creds) and not api.authorized("", creds)
    assert not api.authorized(basic("alice", "nope")["Authorization"], creds)
    assert not api.authorized(basic("bob", "secret")["Authorization"], creds)
    assert not api.authorized("Bearer " + base64.b64encode(b"alice:secret").decode(), creds)
    assert not api.authorized("Basic not-base64!", creds)
    # strictly base64: stray characters are not skipped, even where skipping them would decode the right credentials
    assert not api.authorized("Basic YWxp!Y2U6c2VjcmV0", creds)
    assert base64.b64decode("YWxp!Y2U6c2VjcmV0") == b"alice:secret"
    assert not api.authorized("Basic " + base64.b64encode(b"alice:\xff").decode(), creds)  # not UTF-8


def test_json_bodies_are_standard_json_objects():
    assert api._body(b"") == {} and api._body(b'{"a": 1}') == {"a": 1}
    assert refused(api._body, b"[1]") == (400, "body must be a JSON object")
    status, message = refused(api._body, b'{"a": NaN}')
    assert (status, message) == (400, "body is not valid JSON: NaN is not JSON")
    assert refused(api._body, b"[" * 100_000) == (400, "body nests too deeply")
    assert api._body(b"{}" + b" " * (api.MAX_BODY - 2)) == {}  # exactly the limit
    big = b'{"a": "' + b"x" * api.MAX_BODY + b'"}'
    assert refused(api._body, big) == (413, "request body over 262144 bytes")
    assert refused(lambda raw: api._json(raw, "'payload'", 422), "Infinity") == (
        422,
        "'payload' is not valid JSON: Infinity is not JSON",
    )
    assert refused(lambda raw: api._json(raw, "'payload'", 422), "[" * 100_000) == (422, "'payload' nests too deeply")
    assert refused(lambda raw: api._json(raw), "{") == (400, "body is not valid JSON: " + _json_error("{"))


def _json_error(raw: str) -> str:
    try:
        json.loads(raw)
    except ValueError as err:
        return str(err)
    raise AssertionError(raw)


class Request:
    """What ``read_body`` reads of a Starlette request: headers and the body's chunks."""

    def __init__(self, headers: dict, chunks=(b"{}",)):
        self.headers = headers
        self.chunks = chunks

    async def stream(self):
        for chunk in self.chunks:
            yield chunk


def read(headers: dict, chunks=(b"{}",)) -> dict:
    return asyncio.run(api.read_body(Request(headers, chunks)))


def test_read_body_wants_json_and_stops_at_the_size_limit():
    assert read({"content-type": "application/json"}, [b'{"a":', b" 1}"]) == {"a": 1}
    assert read({"content-type": " Application/JSON ; charset=utf-8", "content-length": "2"}) == {}
    with pytest.raises(api.BadRequest) as raised:
        read({})
    assert (raised.value.status, str(raised.value)) == (
        415,
        "send the body as JSON with 'Content-Type: application/json', not 'nothing'",
    )
    with pytest.raises(api.BadRequest, match=r"not 'text/plain'$"):
        read({"content-type": "text/plain"})
    for announced in (str(api.MAX_BODY + 1), "12x", "-1"):
        with pytest.raises(api.BadRequest, match=r"^request body over 262144 bytes$") as raised:
            read({"content-type": "application/json", "content-length": announced})
        assert raised.value.status == 413
    assert read({"content-type": "application/json", "content-length": str(api.MAX_BODY)}) == {}
    exactly = [b"{}", b" " * (api.MAX_BODY - 2)]
    assert read({"content-type": "application/json"}, exactly) == {}
    chunks = [b'{"a": "', b"x" * api.MAX_BODY, b'"}']
    with pytest.raises(api.BadRequest, match=r"^request body over 262144 bytes$"):
        read({"content-type": "application/json"}, chunks)


def test_a_prompt_list_is_checked_item_by_item():
    check = api._prompt_list("prompts", 2)
    assert check(["a", "b"]) == ["a", "b"]
    for bad in ("a", [], [1], ["a", None], None):
        assert refused(check, bad) == (422, "'prompts' must be a non-empty list of strings")
    assert refused(check, ["a", "b", "c"]) == (413, "'prompts' has 3 items; at most 2 per request")
    assert check(["x" * api.MAX_PROMPT_CHARS]) == ["x" * api.MAX_PROMPT_CHARS]
    assert refused(check, ["a", "x" * (api.MAX_PROMPT_CHARS + 1)]) == (
        413,
        "'prompts'[1] is longer than 4000 characters",
    )
    assert refused(check, ["a", "b\ud800"]) == (422, "'prompts'[1] is not well-formed Unicode (an unpaired surrogate)")
    assert refused(api._prompt_list("other", 5), [1]) == (422, "'other' must be a non-empty list of strings")


def test_optional_fields_take_null_as_not_given():
    check = api._optional(api._prompt_list("prompts", 2))
    assert check(None) is None and check(["a"]) == ["a"]
    assert refused(check, []) == (422, "'prompts' must be a non-empty list of strings")


def test_seeds_explain_and_fpr_checks():
    assert [api._seeds(n) for n in (1, 8)] == [1, 8]
    for bad in (0, 9, True, 1.0, "2", None):
        assert refused(api._seeds, bad) == (422, "'seeds' must be an integer from 1 to 8")
    assert api._explain(True) is True and api._explain(False) is False
    for bad in (1, "true", None):
        assert refused(api._explain, bad) == (422, "'explain' must be true or false")
    assert api._fpr(0.5) == 0.5 and api._fpr(1e-9) == 1e-9
    assert type(api._fpr(0.5)) is float
    for bad in (0, 0.0, 0.51, 1, -0.1, True, "0.1", None):
        assert refused(api._fpr, bad) == (422, "'fpr' must be a number in (0, 0.5]")


def test_parse_fills_the_defaults_and_checks_what_was_sent():
    assert api.parse(api.SCORE, {"prompts": ["a"]}) == {"prompts": ["a"], "seeds": 1, "explain": False}
    assert api.parse(api.SCORE, {"prompts": ["a"], "seeds": 3, "explain": True}) == {
        "prompts": ["a"],
        "seeds": 3,
        "explain": True,
    }
    assert refused(lambda data: api.parse(api.SCORE, data), {}) == (
        422,
        "'prompts' must be a non-empty list of strings",
    )
    assert refused(lambda data: api.parse(api.SCORE, data), {"prompts": ["a"], "seeds": None}) == (
        422,
        "'seeds' must be an integer from 1 to 8",
    )
    assert api.parse(api.CALIBRATION, {}) == {"fpr": 0.01, "prompts": None}
    assert api.Field("x", "doc", api._seeds).default is api.REQUIRED


def test_the_schema_lists_every_request_field_and_option():
    assert api.schema() == {
        "score": {
            "request": {
                "prompts": "list of 1..64 strings (each <= 4000 chars)",
                "seeds": "int 1..8 (default 1): generations per prompt, seeds 0..n-1",
                "explain": "bool (default false): per-word significance",
            },
            "response": {
                "model": "str",
                "threshold": "float|null",
                "results": "list of {prompt, score, scores, flagged, threshold[, words, tokens]}",
            },
        },
        "calibration": {
            "GET": {"model": "str", "threshold": "float|null", "source": "str"},
            "POST": {
                "request": {
                    "fpr": "float in (0, 0.5], default 0.01",
                    "prompts": "optional list of <= 2000 benign prompts (default: memguard's bundled list)",
                },
                "response": {"threshold": "float", "fpr": "float", "n": "int"},
            },
        },
        "txt2img": {
            "alwayson_scripts": {"memguard": {"args": [{name: doc for name, (_, doc) in OPTIONS.items()}]}},
            "info": "extra_generation_params.memguard: {version, payload, results: [...], errors, source, notices}",
        },
    }


def test_score_request_audits_or_explains_with_seeds_from_0():
    service = FakeService()
    assert api.score_request(service, {"prompts": ["a", "b"], "seeds": 2}) == {
        "model": "model-1",
        "threshold": 2.5,
        "results": [{"prompt": "a"}, {"prompt": "b"}],
    }
    assert service.calls == [("audit", ["a", "b"], [0, 1])]
    service.calls.clear()
    out = api.score_request(service, {"prompts": ["a", "b"], "explain": True})
    assert out["results"] == [{"prompt": "a", "words": []}, {"prompt": "b", "words": []}]
    assert service.calls == [("analyze", "a", [0]), ("analyze", "b", [0])]


def test_calibration_request_uses_the_bundled_prompts_unless_given():
    service = FakeService()
    assert api.calibration_request(service, {"fpr": 0.05, "prompts": ["a", "b"]}) == {
        "model": "model-1",
        "threshold": 1.5,
        "fpr": 0.05,
        "n": 2,
    }
    assert service.calls == [("calibrate", ["a", "b"], 0.05)]
    out = api.calibration_request(service, {})
    assert service.calls[-1] == ("calibrate", benign_prompts(), 0.01)
    assert out["n"] == len(benign_prompts())


def test_routes_answer_errors_as_json_with_their_status():
    c = client(FakeService(), "alice:secret")
    denied = c.get(f"{PREFIX}/version")
    assert (denied.status_code, denied.json()) == (401, {"error": "authentication required"})
    assert denied.headers["www-authenticate"] == "Basic"
    auth = basic("alice", "secret")
    assert c.get(f"{PREFIX}/version", headers=auth).json() == {"version": __version__, "model": "model-1"}
    assert c.get(f"{PREFIX}/schema", headers=auth).json() == api.schema()
    assert c.get(f"{PREFIX}/calibration", headers=auth).json() == {
        "model": "model-1",
        "threshold": 2.5,
        "source": "manual threshold 2.5",
    }
    bad = c.post(f"{PREFIX}/score", headers=auth, json={"prompts": []})
    assert (bad.status_code, bad.json()) == (422, {"error": "'prompts' must be a non-empty list of strings"})
    assert c.post(f"{PREFIX}/calibration", headers=auth, json={"prompts": ["a"]}).json()["n"] == 1
    failing = client(FakeService(fail=RuntimeError("boom")))
    crashed = failing.post(f"{PREFIX}/score", json={"prompts": ["a"]})
    assert (crashed.status_code, crashed.json()) == (500, {"error": "memguard failed: RuntimeError: boom"})


def test_a_model_memguard_cannot_score_is_a_409_with_the_reason():
    message = "SD3 is not supported (the loaded checkpoint)"
    refused = client(FakeService(fail=NotApplicable(message))).post(f"{PREFIX}/score", json={"prompts": ["a"]})
    assert (refused.status_code, refused.json()) == (409, {"error": message})


def panel(body) -> tuple[int, dict]:
    answer = client(FakeService()).post(f"{PREFIX}/panel", json=body)
    return answer.status_code, answer.json()


def test_the_panel_route_renders_the_payload_for_its_prompt_box():
    results = [{"index": 0, "seed": 1, "prompt": "a cat", "score": 2.0, "threshold": 1.0, "flagged": True}]
    payload = json.dumps({"results": results, "notices": ["calibrated"]})
    for target in ("txt2img_prompt", "img2img_prompt"):
        assert panel({"payload": payload, "target": target}) == (
            200,
            {"html": render_panel(results, target, ["calibrated"])},
        )
    assert panel({"payload": payload, "target": "elsewhere"}) == (
        200,
        {"html": render_panel(results, None, ["calibrated"])},
    )
    assert panel({"payload": json.dumps({"results": results})}) == (200, {"html": render_panel(results, None, [])})
    assert panel({}) == (200, {"html": ""})


def test_the_panel_route_says_what_is_wrong_with_a_payload():
    assert panel({"payload": 3}) == (
        422,
        {"error": "cannot render the panel: 'payload' must be the JSON text after 'memguard-data:'"},
    )
    assert panel({"payload": "NaN"}) == (
        422,
        {"error": "cannot render the panel: 'payload' is not valid JSON: NaN is not JSON"},
    )
    for payload in ('{"results": {}}', '{"results": [1]}', "[]"):
        assert panel({"payload": payload}) == (
            422,
            {"error": "cannot render the panel: 'payload' must hold a list of results"},
        )
    assert panel({"payload": '{"results": [], "notices": "x"}'}) == (
        422,
        {"error": "cannot render the panel: 'notices' must be a list"},
    )
    wrong_shape = json.dumps({"results": [{"score": 1.0, "threshold": 0.5, "flagged": True, "mitigation": "x"}]})
    assert panel({"payload": wrong_shape}) == (
        422,
        {"error": "cannot render the panel: AttributeError: 'str' object has no attribute 'get'"},
    )
