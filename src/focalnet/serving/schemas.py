"""The request parameters and answers of the HTTP API as pydantic models: FastAPI validates the
query with them and writes `/openapi.json` from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictParameters(BaseModel):
    """Query parameters of `POST /predict` (a JSON body may also carry them as "parameters")."""

    model_config = ConfigDict(extra="ignore")

    top_k: int | None = Field(None, ge=1, description="Classifiers: how many labels (default: the server's --top-k).")
    threshold: float | None = Field(
        None, ge=0, le=1, description="Detectors: the lowest score answered (default: the server's --threshold)."
    )
    label_map: bool = Field(
        False, description='Semantic segmentation: answer {"segments", "label_map"}, the whole map as a palette PNG.'
    )
    mask_ratio: float | None = Field(
        None, gt=0, lt=1, description="Masked image modeling: the share of mask cells hidden (default 0.6)."
    )
    seed: int = Field(0, ge=0, description="Masked image modeling: the seed of the random mask.")


class VisualizeParameters(PredictParameters):
    """Query parameters of `POST /visualize`."""

    blocks: str = Field(
        "last", description="Classifiers: the blocks whose modulators are drawn: last, all, stage ends, or 0,3,-1."
    )
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the heat map or segmentation overlay.")


class Label(BaseModel):
    label: str
    score: float


class Box(BaseModel):
    xmin: int
    ymin: int
    xmax: int
    ymax: int


class Detection(BaseModel):
    label: str
    score: float
    box: Box = Field(description="In the pixels of the image sent.")
    mask: str | None = Field(None, description="Mask R-CNN only: the instance mask, a black-and-white base64 PNG.")


class Segment(BaseModel):
    label: str
    score: None = None
    mask: str = Field(description="Where this class is: a black-and-white (0/255) base64 PNG of the image's size.")


class SegmentsWithLabelMap(BaseModel):
    segments: list[Segment]
    label_map: str = Field(description="Every pixel's label: a palette PNG (pixel value = label index), base64.")


class Reconstruction(BaseModel):
    loss: float = Field(description="SimMIM's L1 loss on the hidden pixels of this image.")
    mask_ratio: float
    mask: str = Field(description="Hidden pixels (255) as a base64 PNG.")
    masked: str = Field(description="The input with hidden pixels grey, base64 PNG.")
    reconstruction: str = Field(description="The model's reconstruction, base64 PNG.")
    composite: str = Field(description="The reconstruction with the visible pixels pasted back, base64 PNG.")


Answer = list[Label] | list[Detection] | list[Segment] | SegmentsWithLabelMap | Reconstruction
PredictAnswer = Answer | list[Answer]
"""One image's answer (its task's shape), or a list of them for several images."""


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    task: str
    model_class: str | None
    labels: list[str]
    num_labels: int
    input_size: list[int] | None
    preprocessing: dict[str, Any] | None
    dtype: str
    device: str
    cpu_threads: int
    library_version: str
    settings: dict[str, Any]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Not an image, a damaged image, or a malformed body",
        401: "Missing or wrong API key (Authorization: Bearer <key>)",
        413: "Body, image pixels or image count over the server's limits",
        415: "Unsupported Content-Type",
        422: "Invalid query parameters",
        500: "The model failed on this request's batch",
        503: "Loading, draining, or the queue is full (see Retry-After)",
        504: "Waited longer than the server's --timeout-s for the model",
    }.items()
}
