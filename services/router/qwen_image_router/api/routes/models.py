"""GET /v1/models: every model a pool of workers serves, and MODEL_NAME."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from qwen_image_router.api.deps import RuntimeDep
from qwen_image_router.errors import error_doc
from qwen_image_router.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])

OWNED_BY = "Qwen"


def _card(name: str, request: Request) -> ModelCard:
    created: int = request.app.state.started_at
    return ModelCard(id=name, created=created, owned_by=OWNED_BY)


@router.get("/models")
async def list_models(runtime: RuntimeDep, request: Request) -> ModelList:
    return ModelList(data=[_card(name, request) for name in runtime.pools.served()])


@router.get("/models/{model_id}", responses={404: error_doc("Model not found")})
async def get_model(model_id: str, runtime: RuntimeDep, request: Request) -> ModelCard:
    """What `client.models.retrieve(...)` asks; the name matches in any letter case."""
    for name in runtime.pools.served():
        if name.casefold() == model_id.casefold():
            return _card(name, request)
    raise HTTPException(status_code=404, detail=f"Model not found: {model_id}")
