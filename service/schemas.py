"""Request and response bodies of the native and KServe V1 APIs (also the OpenAPI docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class B64Input(BaseModel):
    b64: str = Field(description="the bytes of an image file (PNG, JPEG, WebP, BMP), base64-encoded")


class ImageParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(default=3, ge=1, le=1000, description="how many classes to list")
    invert: bool | None = Field(default=None, description="dark ink on light paper? null: decide from the border")


class AnomalyParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reconstruction: bool = Field(default=False, description="also return the reconstructed image (PNG, base64)")
    invert: bool | None = Field(default=None, description="dark ink on light paper? null: decide from the border")


class SampleParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(default=16, ge=1, le=64, description="how many images")
    seed: int | None = Field(default=None, ge=0, lt=2**63, description="the same seed gives the same bytes; "
                             "default: random (the answer says which)")
    label: int | None = Field(default=None, ge=0, description="the class to draw (conditional models); "
                              "default: random classes")
    format: Literal["png", "json"] = Field(default="png", description="a PNG grid, or JSON with one PNG per image")
    steps: int | None = Field(default=None, ge=1, description="diffusion models: denoising (DDIM) steps, fewer is "
                              "faster; default and bounds: the model's metadata")


class TextParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(default=3, ge=1, le=1000, description="how many classes to list (classifiers)")


class ForecastParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    horizon: int | None = Field(default=None, ge=1, description="values to forecast; default: the model's step")


class PredictRequest(BaseModel):
    inputs: list[Any] = Field(min_length=1, description='one item per input: images as {"b64": ...}, texts as strings')
    parameters: dict[str, Any] = Field(default_factory=dict)


class KServeV1Request(BaseModel):
    instances: list[Any] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ScoredLabel(BaseModel):
    label: str
    index: int
    score: float


class Classification(BaseModel):
    label: str
    index: int
    score: float
    top_k: list[ScoredLabel]


class TextClassification(Classification):
    truncated: bool = Field(description="the text was longer than the model's maximum and was cut")


class Embedding(BaseModel):
    embedding: list[float]
    truncated: bool


class Forecast(BaseModel):
    forecast: list[float]


class AnomalyItem(BaseModel):
    anomaly_score: float
    threshold: float
    is_anomaly: bool
    reconstruction_png_b64: str | None = None


Prediction = Classification | TextClassification | Embedding | Forecast | AnomalyItem


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


class KServeV1Response(BaseModel):
    predictions: list[Prediction]


class GenerateRequest(BaseModel):
    prompt: str = Field(description="the text to continue (may be empty)")
    max_tokens: int = Field(default=200, ge=1, description="the most tokens to generate")
    temperature: float = Field(default=1.0, ge=0.0, le=5.0, description="0 = greedy")
    top_k: int | None = Field(default=None, ge=1)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, description="the same seed gives the same text")
    stop: str | list[str] | None = Field(default=None, description="up to 4 strings that end the text")
    stream: bool = Field(default=False, description="Server-Sent Events, one per token")


class GenerateResponse(BaseModel):
    model: str
    version: int
    text: str
    tokens: int
    finish_reason: str


class ErrorBody(BaseModel):
    error: str
    type: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "bad input (the message names its index)", 401: "missing or wrong API key",
        404: "unknown model or version", 413: "body, image or input count too large",
        415: "unsupported media type", 422: "the body does not fit the schema",
        503: "not ready, or the queue is full (Retry-After)", 504: "the request's deadline passed",
    }.items()
}
