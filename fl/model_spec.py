"""The ``[federation.model]`` table, without torch: the configuration reads it cheaply."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MAX_HIDDEN_LAYERS", "MAX_LAYER_WIDTH", "ModelSpec"]

_DEFAULT_HIDDEN = (32,)
MAX_HIDDEN_LAYERS = 4
MAX_LAYER_WIDTH = 4096


class ModelSpec(BaseModel):
    """The ``[federation.model]`` table: architecture and initial-weight seed, agreed by all.

    ``hidden`` defaults to ``[32]`` for an MLP and to ``[]`` for logistic regression.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["mlp", "logistic"] = "mlp"
    hidden: tuple[int, ...] = Field(default=_DEFAULT_HIDDEN, max_length=MAX_HIDDEN_LAYERS)
    seed: int = Field(default=42, ge=0, lt=2**63)

    @model_validator(mode="before")
    @classmethod
    def _hidden_default_follows_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "logistic" and "hidden" not in data:
            return {**data, "hidden": ()}
        return data

    @model_validator(mode="after")
    def _hidden_fits_kind(self) -> ModelSpec:
        if self.kind == "logistic" and self.hidden:
            raise ValueError("a logistic model has no hidden layers; leave hidden out or empty")
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("an mlp needs at least one hidden layer size")
        bad = [h for h in self.hidden if not 1 <= h <= MAX_LAYER_WIDTH]
        if bad:
            raise ValueError(f"hidden layer sizes must be in [1, {MAX_LAYER_WIDTH}], got {bad[0]}")
        return self
