"""HTTP API under ``/memguard/v1/``: version, schema, score prompts, read and run the calibration.

The WebUI protects only its own ``/sdapi`` routes with ``--api-auth`` (A1111 1.10.1 ``modules/api/api.py``,
``Api.auth``); extension routes are open unless they check credentials themselves. These routes require the same
HTTP Basic credentials whenever the host was started with ``--api-auth``. Requests are parsed by hand (not by
pydantic, whose major version differs between A1111 and Forge) and bounded: body size (announced or streamed),
number and length of prompts, seeds; anything malformed gets a 4xx with a message naming the problem. A POST must
say ``Content-Type: application/json``: a browser cannot send that to another origin without a CORS preflight,
which the WebUI refuses unless configured, so a web page cannot make a visitor's browser calibrate or score.
Model calls are serialized by a lock (and, in the WebUI, by the host's generation lock), so concurrent clients each
get their own results.

``/panel`` is the exception to the credentials rule: it only formats the results a page already holds (no model,
no stored state), for ``javascript/memguard.js``, which runs in the WebUI's page and has no credentials to send.
"""

import base64
import binascii
import json
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .hosts.families import NotApplicable
from .service import Service, benign_prompts
from .tokens import well_formed

PREFIX = "/memguard/v1"
MAX_BODY = 256 * 1024
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 4000
MAX_SEEDS = 8
MAX_CALIBRATION_PROMPTS = 2000


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_credentials(api_auth: str | None) -> dict[str, str]:
    """``--api-auth "user:pass,user2:pass2"`` as ``{user: password}``."""
    creds = {}
    for pair in (api_auth or "").split(","):
        if ":" in pair:
            user, password = pair.strip().split(":", 1)
            creds[user] = password
    return creds


def authorized(header: str | None, creds: dict[str, str]) -> bool:
    if not creds:
        return True
    if not header or header[:6].lower() != "basic ":  # the scheme is case-insensitive (RFC 7617)
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    expected = creds.get(user)
    return expected is not None and secrets.compare_digest(password.encode(), expected.encode())


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _json(raw: bytes | str, what: str = "body", status: int = 400) -> Any:
    """Standard JSON only (Python's parser also takes ``NaN`` and ``Infinity``: no field may hold them)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(f"{what} is not valid JSON: {err}", status) from err
    except RecursionError as err:
        raise BadRequest(f"{what} nests too deeply", status) from err


def _body(raw: bytes) -> dict:
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body over {MAX_BODY} bytes", 413)
    data = _json(raw or b"{}")
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


async def read_body(request: Any) -> dict:
    """The JSON object a POST carries: 415 unless it says it is JSON, 413 past :data:`MAX_BODY` bytes (read no
    further than that, whatever ``Content-Length`` says), 400 when it is not a JSON object."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise BadRequest(f"send the body as JSON with 'Content-Type: application/json', not {kind or 'nothing'!r}", 415)
    announced = request.headers.get("content-length")
    if announced is not None and (not announced.isdigit() or int(announced) > MAX_BODY):
        raise BadRequest(f"request body over {MAX_BODY} bytes", 413)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BadRequest(f"request body over {MAX_BODY} bytes", 413)
    return _body(bytes(raw))


def _prompt_list(key: str, limit: int) -> Callable[[Any], list[str]]:
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
            raise BadRequest(f"'{key}' must be a non-empty list of strings", 422)
        if len(value) > limit:
            raise BadRequest(f"'{key}' has {len(value)} items; at most {limit} per request", 413)
        long = next((i for i, p in enumerate(value) if len(p) > MAX_PROMPT_CHARS), None)
        if long is not None:
            raise BadRequest(f"'{key}'[{long}] is longer than {MAX_PROMPT_CHARS} characters", 413)
        broken = next((i for i, p in enumerate(value) if not well_formed(p)), None)
        if broken is not None:
            raise BadRequest(f"'{key}'[{broken}] is not well-formed Unicode (an unpaired surrogate)", 422)
        return value

    return check


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``check``, with null accepted as 'not given'."""
    return lambda value: None if value is None else check(value)


def _seeds(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEEDS:
        raise BadRequest(f"'seeds' must be an integer from 1 to {MAX_SEEDS}", 422)
    return value


def _explain(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("'explain' must be true or false", 422)
    return value


def _fpr(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 0.5:
        raise BadRequest("'fpr' must be a number in (0, 0.5]", 422)
    return float(value)


REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One field of a request body: what the schema says about it, its check (the parsed value, or
    :class:`BadRequest`), and its default (:data:`REQUIRED`: none)."""

    name: str
    doc: str
    check: Callable[[Any], Any]
    default: Any = REQUIRED


SCORE = (
    Field(
        "prompts",
        f"list of 1..{MAX_PROMPTS} strings (each <= {MAX_PROMPT_CHARS} chars)",
        _prompt_list("prompts", MAX_PROMPTS),
    ),
    Field("seeds", f"int 1..{MAX_SEEDS} (default 1): generations per prompt, seeds 0..n-1", _seeds, 1),
    Field("explain", "bool (default false): per-word significance", _explain, False),
)
CALIBRATION = (
    Field("fpr", "float in (0, 0.5], default 0.01", _fpr, 0.01),
    Field(
        "prompts",
        f"optional list of <= {MAX_CALIBRATION_PROMPTS} benign prompts (default: memguard's bundled list)",
        _optional(_prompt_list("prompts", MAX_CALIBRATION_PROMPTS)),
        None,
    ),
)


def parse(fields: Sequence[Field], data: dict) -> dict[str, Any]:
    """The request's fields, checked, defaults filled in for those not sent."""
    out = {}
    for field in fields:
        if field.name not in data and field.default is not REQUIRED:
            out[field.name] = field.default
        else:
            out[field.name] = field.check(data.get(field.name))
    return out


def schema() -> dict:
    """What ``GET /schema`` answers: the request fields from the tables the validators use, the responses, and the
    per-request options a txt2img request can give memguard (``hosts.request.FIELDS``)."""
    from .hosts.request import FIELDS as OPTIONS

    def request(fields: Sequence[Field]) -> dict:
        return {f.name: f.doc for f in fields}

    return {
        "score": {
            "request": request(SCORE),
            "response": {
                "model": "str",
                "threshold": "float|null",
                "results": "list of {prompt, score, scores, flagged, threshold[, words, tokens]}",
            },
        },
        "calibration": {
            "GET": {"model": "str", "threshold": "float|null", "source": "str"},
            "POST": {"request": request(CALIBRATION), "response": {"threshold": "float", "fpr": "float", "n": "int"}},
        },
        "txt2img": {
            "alwayson_scripts": {"memguard": {"args": [{name: doc for name, (_, doc) in OPTIONS.items()}]}},
            "info": "extra_generation_params.memguard: {version, payload, results: [...], errors, source, notices}",
        },
    }


def score_request(service: Service, data: dict) -> dict:
    fields = parse(SCORE, data)
    seeds = list(range(fields["seeds"]))
    prompts = fields["prompts"]
    results = [service.analyze(p, seeds) for p in prompts] if fields["explain"] else service.audit(prompts, seeds)
    return {"model": service.model_id(), "threshold": service.threshold(), "results": results}


def calibration_request(service: Service, data: dict) -> dict:
    fields = parse(CALIBRATION, data)
    result = service.calibrate(fields["prompts"] or benign_prompts(), fields["fpr"])
    return {"model": service.model_id(), "threshold": result["threshold"], "fpr": result["fpr"], "n": result["n"]}


def register_routes(app: Any, service_factory: Callable[[], Service], api_auth: str | None = None) -> None:
    """Add the routes to a FastAPI app (the WebUI's, from ``on_app_started``)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    creds = parse_credentials(api_auth)
    lock = threading.Lock()

    def guarded(handler: Callable[[Service, dict], dict], needs_body: bool):
        async def endpoint(request: Request):
            if not authorized(request.headers.get("authorization"), creds):
                return JSONResponse({"error": "authentication required"}, 401, {"WWW-Authenticate": "Basic"})
            try:
                data = await read_body(request) if needs_body else {}

                def call():
                    with lock:
                        return handler(service_factory(), data)

                return JSONResponse(await run_in_threadpool(call))
            except BadRequest as err:
                return JSONResponse({"error": str(err)}, err.status)
            except NotApplicable as err:  # a model memguard cannot score (hosts.families): the request cannot be met
                return JSONResponse({"error": str(err)}, 409)
            except Exception as err:  # a model failure is the server's, said plainly
                return JSONResponse({"error": f"memguard failed: {type(err).__name__}: {err}"}, 500)

        return endpoint

    def version(service: Service, _data: dict) -> dict:
        return {"version": __version__, "model": service.model_id()}

    def schema_request(_service: Service, _data: dict) -> dict:
        return schema()

    def calibration(service: Service, _data: dict) -> dict:
        return {"model": service.model_id(), "threshold": service.threshold(), "source": service.threshold_source()}

    async def panel(request: Request):
        """Render the warning panel for a generation's results (pure formatting: no model, no credentials)."""
        try:
            data = await read_body(request)
            payload = data.get("payload", "{}")
            if not isinstance(payload, str):
                raise BadRequest("'payload' must be the JSON text after 'memguard-data:'", 422)
            parsed = _json(payload, "'payload'", 422)
            results = parsed.get("results", []) if isinstance(parsed, dict) else None
            notices = parsed.get("notices", []) if isinstance(parsed, dict) else None
            target = data.get("target") if data.get("target") in ("txt2img_prompt", "img2img_prompt") else None
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise BadRequest("'payload' must hold a list of results", 422)
            if not isinstance(notices, list):
                raise BadRequest("'notices' must be a list", 422)
            from .ui.panel import render_panel

            return JSONResponse({"html": render_panel(results, target, notices)})
        except BadRequest as err:
            return JSONResponse({"error": f"cannot render the panel: {err}"}, err.status)
        except (AttributeError, KeyError, TypeError, ValueError) as err:  # results of the wrong shape
            return JSONResponse({"error": f"cannot render the panel: {type(err).__name__}: {err}"}, 422)

    app.add_api_route(f"{PREFIX}/panel", panel, methods=["POST"])
    app.add_api_route(f"{PREFIX}/version", guarded(version, False), methods=["GET"])
    app.add_api_route(f"{PREFIX}/schema", guarded(schema_request, False), methods=["GET"])
    app.add_api_route(f"{PREFIX}/score", guarded(score_request, True), methods=["POST"])
    app.add_api_route(f"{PREFIX}/calibration", guarded(calibration, False), methods=["GET"])
    app.add_api_route(f"{PREFIX}/calibration", guarded(calibration_request, True), methods=["POST"])
