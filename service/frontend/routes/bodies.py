"""Reading prediction bodies: raw image bytes, multipart ``file`` fields, or JSON with base64."""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from service.errors import InputError, ServeError
from service.runtimes.images import ACCEPTED_MEDIA_TYPES
from service.schemas import KServeV1Request, PredictRequest
from service.settings import Settings

JSON_TYPES = {"application/json", "text/json"}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, schema: type[BaseModel]) -> Any:
    body = await request.body()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServeError(400, f"body is not valid JSON: {exc}", "invalid_json") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ServeError(422, f"{where}: {first['msg']}" if where else first["msg"], "validation_error") from None


def b64_image(item: Any, index: int) -> bytes:
    if isinstance(item, dict) and isinstance(item.get("b64"), str):
        text = item["b64"]
    elif isinstance(item, str):
        text = item
    else:
        raise InputError(index, 'an image input is {"b64": "<base64 of the file>"}')
    if text.startswith("data:") and "," in text:  # a data URL, as browsers produce
        text = text.split(",", 1)[1]
    try:
        return b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(index, "b64 is not valid base64") from None


def check_count(count: int, limit: int) -> None:
    if count == 0:
        raise ServeError(422, "inputs must not be empty", "validation_error")
    if count > limit:
        raise ServeError(413, f"{count} inputs exceed the limit of {limit} per request", "too_many_inputs")


async def read_image_request(request: Request, settings: Settings,
                             instances_key: str = "inputs") -> tuple[list[bytes], dict[str, Any]]:
    """(image files' bytes, parameters) from any of the accepted encodings."""
    max_inputs, max_part_bytes = settings.max_inputs_per_request, settings.max_body_bytes
    kind = media_type(request)
    query = dict(request.query_params)
    if kind in ACCEPTED_MEDIA_TYPES or kind == "application/octet-stream":
        body = await request.body()
        return [body], query
    if kind == "multipart/form-data":
        form = await request.form(max_files=max_inputs + 1, max_part_size=max_part_bytes)
        files: list[bytes] = []
        params: dict[str, Any] = dict(query)
        for key, value in form.multi_items():
            if key == "file":
                if not isinstance(value, UploadFile):
                    raise InputError(len(files), "the file field must carry a file")
                files.append(await value.read())
            elif isinstance(value, str):
                params[key] = value
        check_count(len(files), max_inputs)
        return files, params
    if kind in JSON_TYPES or kind.endswith("+json"):
        items, params = await read_json_inputs(request, settings, instances_key)
        return [b64_image(item, index) for index, item in enumerate(items)], params
    raise ServeError(415, f"unsupported media type {kind or '(none)'!r}: send an image (image/png, image/jpeg, "
                     "image/webp, image/bmp), multipart/form-data with file fields, or application/json")


async def read_json_inputs(request: Request, settings: Settings,
                           instances_key: str = "inputs") -> tuple[list[Any], dict[str, Any]]:
    """(inputs, parameters) from JSON ``{"inputs": [...], "parameters": {...}}`` (or KServe's ``instances``)."""
    kind = media_type(request)
    if not (kind in JSON_TYPES or kind.endswith("+json")):
        raise ServeError(415, f"unsupported media type {kind or '(none)'!r}: send application/json "
                         f'{{"{instances_key}": [...], "parameters": {{...}}}}')
    parsed = await read_json(request, PredictRequest if instances_key == "inputs" else KServeV1Request)
    items = getattr(parsed, instances_key)
    check_count(len(items), settings.max_inputs_per_request)
    return items, {**dict(request.query_params), **parsed.parameters}


async def read_text_request(request: Request, settings: Settings,
                            instances_key: str = "inputs") -> tuple[list[Any], dict[str, Any]]:
    """(texts, parameters) from JSON ``{"inputs": [...]}`` (or ``instances``) or a text/plain body."""
    if media_type(request) == "text/plain":
        body = await request.body()
        try:
            return [body.decode("utf-8")], dict(request.query_params)
        except UnicodeDecodeError:
            raise InputError(0, "text is not valid UTF-8") from None
    return await read_json_inputs(request, settings, instances_key)
