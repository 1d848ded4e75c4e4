"""``GET /``: the playground page (self-contained: it makes no external requests)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"

router = APIRouter(tags=["ui"])


@router.get("/", summary="Playground page", response_class=FileResponse)
async def playground() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")
