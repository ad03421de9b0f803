"""Reading an explanation request body: multipart form or JSON with base64, within limits.

The body is read through a counting ``receive`` that stops at a cap derived from
``max_upload_bytes`` (plus form or base64 overhead), so an oversized upload is refused with 413
without being read into memory whole; a ``Content-Length`` above the cap is refused before any
byte is read. Multipart file parts are spooled to disk by Starlette above 1 MB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.types import Message

from app.problems import ProblemError, problem_from_pydantic
from app.schemas import ExplanationFields, ExplanationRequest

FORM_FIELDS = (
    "file", "method", "model", "target", "params", "wait", "evaluate", "callback_url", "cache",
)  # fmt: skip
FORM_OVERHEAD = 256 * 1024
"""Bytes allowed on top of the file for the other form fields and multipart framing."""
JSON_OVERHEAD = 256 * 1024

_DATA_URL = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*?);base64,", re.IGNORECASE)


@dataclass(frozen=True)
class Submission:
    """An explanation request as read from the body, before resolution against the models."""

    image: bytes
    content_type: str | None
    fields: ExplanationFields

    def digest(self) -> str:
        """SHA-256 of the request as sent (image bytes and fields): what an
        ``Idempotency-Key`` binds to."""
        fields = self.fields.model_dump(mode="json", exclude={"wait"})
        text = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(hashlib.sha256(self.image).digest() + text).hexdigest()


async def read_submission(request: Request, max_upload_bytes: int) -> Submission:
    """Parse the request body; raises ``ProblemError`` (413, 415, 422, 400)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        cap = max_upload_bytes + FORM_OVERHEAD
        limited = _limit(request, cap, max_upload_bytes)
        return await _read_form(limited, max_upload_bytes)
    if media == "application/json" or media.endswith("+json"):
        cap = 4 * (max_upload_bytes // 3 + 1) + JSON_OVERHEAD
        limited = _limit(request, cap, max_upload_bytes)
        return await _read_json(limited, max_upload_bytes)
    raise ProblemError(
        415,
        "send the image as multipart/form-data (field `file`) or as application/json with the "
        f"image base64-encoded in `image`, not {media or 'no content type'!r}",
        kind="unsupported-media-type",
    )


def _too_large(max_upload_bytes: int, what: str = "the upload") -> ProblemError:
    return ProblemError(
        413,
        f"{what} is larger than the {max_upload_bytes:,} bytes accepted",
        kind="payload-too-large",
        max_upload_bytes=max_upload_bytes,
    )


TAIL_BYTES = 512
"""Bytes of the body's end kept to check a multipart body's closing delimiter."""


def _limit(request: Request, cap: int, max_upload_bytes: int) -> Request:
    """A view of ``request`` whose body reading fails with 413 past ``cap`` bytes; it keeps
    the body's last bytes in ``scope["state"]["body_tail"]``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _too_large(max_upload_bytes, "the request body")
    receive = request.receive
    seen = 0
    state = request.scope.setdefault("state", {})
    state["body_tail"] = b""

    async def limited_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > cap:
                raise _too_large(max_upload_bytes, "the request body")
            state["body_tail"] = (state["body_tail"] + chunk)[-TAIL_BYTES:]
        return message

    return Request(request.scope, receive=limited_receive)


def _check_closed(request: Request) -> None:
    """400 when a multipart body ends before its closing delimiter (a cut-off upload)."""
    boundary = ""
    for part in request.headers.get("content-type", "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    tail: bytes = request.scope.get("state", {}).get("body_tail", b"")
    if boundary and b"--" + boundary.encode() + b"--" not in tail:
        raise ProblemError(
            400,
            "the multipart body ends before its closing boundary: the upload was cut off",
            kind="invalid-image",
        )


async def _read_form(request: Request, max_upload_bytes: int) -> Submission:
    form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 8)
    try:
        _check_closed(request)
        fields = _form_fields(form)
        upload = form.get("file")
        if upload is None:
            raise ProblemError(
                422,
                "the image is missing: send it in the form field `file`",
                kind="invalid-request",
            )
        if not isinstance(upload, UploadFile):
            raise ProblemError(
                422,
                "form field `file` must be a file upload (curl: -F file=@image.png)",
                kind="invalid-request",
            )
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise _too_large(max_upload_bytes)
        content_type = upload.content_type
    finally:
        await form.close()
    return Submission(image=data, content_type=content_type, fields=fields)


def _form_fields(form: FormData) -> ExplanationFields:
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
    if unknown:
        raise ProblemError(
            422,
            f"unknown form field(s) {', '.join(unknown)}; the fields are "
            f"{', '.join(FORM_FIELDS)} (method parameters go in `params` as a JSON object)",
            kind="invalid-request",
        )
    raw: dict[str, Any] = {}
    for name in ("method", "model", "target", "wait", "callback_url", "cache"):
        values = form.getlist(name)
        if len(values) > 1:
            raise ProblemError(422, f"form field `{name}` given twice", kind="invalid-request")
        if values and str(values[0]).strip():
            raw[name] = str(values[0]).strip()
    params = form.getlist("params")
    if len(params) > 1:
        raise ProblemError(422, "form field `params` given twice", kind="invalid-request")
    if params and str(params[0]).strip():
        raw["params"] = _json_object(str(params[0]))
    evaluate = [str(v) for v in form.getlist("evaluate") if str(v).strip()]
    if evaluate:
        raw["evaluate"] = _names(evaluate)
    try:
        return ExplanationFields.model_validate(raw)
    except ValidationError as exc:
        raise problem_from_pydantic(exc) from exc


MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays accepted in a request (a request needs 3)."""


def loads(text: str | bytes, what: str) -> Any:
    """``json.loads`` with a 422 for invalid JSON or JSON nested deeper than 32 levels."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        depth = MAX_JSON_DEPTH + 1
    except ValueError as exc:
        raise ProblemError(422, f"{what} is not valid JSON: {exc}", kind="invalid-request") from exc
    else:
        depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise ProblemError(
            422,
            f"{what} is nested deeper than {MAX_JSON_DEPTH} levels",
            kind="invalid-request",
        )
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
    return deepest


def _json_object(text: str) -> dict[str, Any]:
    value = loads(text, "`params`")
    if not isinstance(value, dict):
        raise ProblemError(
            422,
            f"`params` must be a JSON object, not {type(value).__name__}",
            kind="invalid-request",
        )
    return value


def _names(values: list[str]) -> list[str]:
    """Evaluation names from repeated fields, comma-separated lists, or JSON lists."""
    names: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            items = loads(text, "`evaluate`")
            if not isinstance(items, list):
                raise ProblemError(
                    422, "`evaluate` must be a list of names", kind="invalid-request"
                )
            names.extend(str(item).strip() for item in items)
        else:
            names.extend(part.strip() for part in text.split(","))
    return [name for name in names if name]


async def _read_json(request: Request, max_upload_bytes: int) -> Submission:
    body = await request.body()
    payload = loads(body, "the body")
    if isinstance(payload, dict) and isinstance(payload.get("evaluate"), str):
        payload["evaluate"] = _names([payload["evaluate"]])
    try:
        parsed = ExplanationRequest.model_validate(payload)
    except ValidationError as exc:
        raise problem_from_pydantic(exc) from exc
    content_type, data = _decode_base64(parsed.image)
    if len(data) > max_upload_bytes:
        raise _too_large(max_upload_bytes)
    fields = ExplanationFields.model_validate(parsed.model_dump(exclude={"image"}))
    return Submission(image=data, content_type=content_type, fields=fields)


def _decode_base64(text: str) -> tuple[str | None, bytes]:
    """(declared type of a data URL or None, decoded bytes); raises 400 for bad base64."""
    content_type = None
    match = _DATA_URL.match(text)
    if match:
        content_type = match.group("type") or None
        text = text[match.end() :]
    compact = "".join(text.split())
    try:
        if "-" in compact or "_" in compact:
            return content_type, base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return content_type, base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProblemError(
            400, f"`image` is not valid base64: {exc}", kind="invalid-image"
        ) from exc
