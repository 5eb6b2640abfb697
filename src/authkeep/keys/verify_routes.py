"""Placeholder: filled in by the issue "API keys"."""

from fastapi import APIRouter

router = APIRouter()
