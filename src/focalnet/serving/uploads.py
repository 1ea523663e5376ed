"""Request bodies to image bytes, as the Hugging Face Inference API takes them: the raw image
(`Content-Type: image/*` or `application/octet-stream`), multipart `image` files, or JSON
`{"inputs": <base64 or a list of them>, "parameters": {...}}`. Everything stays in memory; the
server never writes an upload to disk nor opens a path or URL named in one."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from .options import ServingError

IMAGE_FIELD = "image"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


@dataclass
class Upload:
    """What a request body holds."""

    images: list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)
    """A JSON body's "parameters" (the query parameters' names)."""
    as_list: bool = False
    """Answer with a list of answers: several images were sent, or a JSON list of one."""


def split_body(content_type: str, body: bytes) -> Upload:
    """The images (and a JSON body's parameters) of a request body."""
    media = _media_type(content_type)
    if media.startswith("image/") or media in ("application/octet-stream", ""):
        return Upload([body])
    if media == "multipart/form-data":
        images = _multipart_images(content_type, body)
        return Upload(images, as_list=len(images) > 1)
    if media == "application/json":
        return _json_images(body)
    raise ServingError(
        415,
        "unsupported_media_type",
        f"Content-Type {media!r} is not accepted: send the image itself (Content-Type: image/jpeg, image/png, ...; "
        'with curl: -H "Content-Type: image/jpeg" --data-binary @photo.jpg), multipart/form-data with image files '
        'named "image", or JSON {"inputs": "<base64 image>"}',
    )


def _multipart_images(content_type: str, body: bytes) -> list[bytes]:
    """The `image` file parts of a multipart body, parsed in memory with python-multipart."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ServingError(400, "bad_multipart", "the multipart Content-Type has no boundary")
    parts: list[dict[str, Any]] = []
    header: dict[str, bytearray] = {}

    def begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def field_data(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def value_data(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def header_end() -> None:
        name = bytes(header.pop("field", b"")).decode("latin-1").lower()
        parts[-1]["headers"][name] = bytes(header.pop("value", b""))

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": field_data,
        "on_header_value": value_data,
        "on_header_end": header_end,
        "on_part_data": part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as error:
        raise ServingError(400, "bad_multipart", f"the multipart body cannot be parsed ({error})") from None
    images = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", b""))
        if disposition.get(b"name") == IMAGE_FIELD.encode():
            images.append(bytes(part["data"]))
    if not images:
        raise ServingError(400, "no_image", f'the multipart body has no file field named "{IMAGE_FIELD}"')
    return images


def _json_images(body: bytes) -> Upload:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ServingError(400, "bad_json", f"the JSON body cannot be parsed ({error})") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise ServingError(400, "bad_json", 'the JSON body must be an object {"inputs": "<base64 image>", ...}')
    inputs = payload["inputs"]
    encoded = inputs if isinstance(inputs, list) else [inputs]
    if not encoded:
        raise ServingError(400, "empty_body", '"inputs" is an empty list')
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ServingError(422, "invalid_parameter", '"parameters" must be an object')
    images = [_from_base64(value, index) for index, value in enumerate(encoded)]
    return Upload(images, parameters, as_list=isinstance(inputs, list))


def _from_base64(value: Any, index: int) -> bytes:
    """Base64 text (optionally a `data:image/...;base64,` URL) as bytes."""
    if not isinstance(value, str):
        raise ServingError(400, "bad_json", f"inputs[{index}] must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(400, "bad_base64", f"inputs[{index}] is not valid base64") from None
