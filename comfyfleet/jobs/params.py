"""Generation parameters an app may set without editing the ComfyUI graph."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# 2**53 - 1: ComfyUI's seed inputs go to 0xffffffffffffffff, but JSON clients lose precision above 2**53.
MAX_SEED = 2**53 - 1


class GenerateParams(BaseModel):
    """Overrides applied to a workflow or a template; every field is optional."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, max_length=10_000)
    negative_prompt: str | None = Field(None, max_length=10_000)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=150)
    cfg: float | None = Field(None, ge=0.0, le=30.0)
    width: int | None = Field(None, ge=64, le=4096, multiple_of=8)
    height: int | None = Field(None, ge=64, le=4096, multiple_of=8)
    batch_size: int | None = Field(None, ge=1, le=16)
    sampler_name: str | None = Field(None, max_length=64)
    scheduler: str | None = Field(None, max_length=64)
    denoise: float | None = Field(None, ge=0.0, le=1.0)
    checkpoint: str | None = Field(None, max_length=255)
    lora: str | None = Field(None, max_length=255)
    lora_strength: float | None = Field(None, ge=-10.0, le=10.0)
    image: str | None = Field(None, max_length=255, description="input image name for LoadImage nodes")
    filename_prefix: str | None = Field(None, max_length=128, pattern=r"^[\w\-./]+$")

    def given(self) -> dict[str, object]:
        return self.model_dump(exclude_none=True)
