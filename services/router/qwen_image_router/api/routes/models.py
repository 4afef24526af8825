"""GET /v1/models: the one model this deployment serves."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from qwen_image_router.api.deps import SettingsDep
from qwen_image_router.errors import error_doc
from qwen_image_router.schemas import ModelCard, ModelList
from qwen_image_router.settings import RouterSettings

router = APIRouter(prefix="/v1", tags=["models"])

OWNED_BY = "Qwen"


def _card(settings: RouterSettings, request: Request) -> ModelCard:
    created: int = request.app.state.started_at
    return ModelCard(id=settings.model_name, created=created, owned_by=OWNED_BY)


@router.get("/models")
async def list_models(settings: SettingsDep, request: Request) -> ModelList:
    return ModelList(data=[_card(settings, request)])


@router.get("/models/{model_id}", responses={404: error_doc("Model not found")})
async def get_model(model_id: str, settings: SettingsDep, request: Request) -> ModelCard:
    """What `client.models.retrieve(...)` asks; the name matches in any letter case."""
    if model_id.casefold() != settings.model_name.casefold():
        raise HTTPException(status_code=404, detail=f"Model not found: {model_id}")
    return _card(settings, request)
