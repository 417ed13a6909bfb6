"""Inputs of a request: local files and step outputs uploaded (once per run), URLs as is."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from klingflow.client import KlingClient
from klingflow.errors import ApiError
from klingflow.files import file_hash
from klingflow.journal import Journal
from klingflow.plan import request_body
from klingflow.run.results import OutputFile, step_failure
from klingflow.run.waiting import Patience
from klingflow.spec.pipeline import Pipeline, Ref, Step, Template

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".mp4": "video/mp4"}


class Uploads:
    """Builds request bodies; each file (by content hash) is uploaded at most once per run."""

    def __init__(self, *, pipeline: Pipeline, client: KlingClient, journal: Journal,
                 uploaded: Mapping[str, str], output_of: Callable[[Ref], OutputFile],
                 patience: Patience) -> None:
        self._pipeline = pipeline
        self._client = client
        self._journal = journal
        self._urls: dict[str, str] = dict(uploaded)  # sha256 -> asset URL
        self._locks: dict[str, anyio.Lock] = {}
        self._output_of = output_of
        self._patience = patience

    async def body(self, step: Step, email: str | None) -> dict[str, Any]:
        """The step's request body, with every input's URL."""
        urls = {ref: await self._url_of(step, ref, email) for ref in refs_of(step)}
        return request_body(step, self._pipeline, urls.__getitem__, email=email)

    async def _url_of(self, step: Step, ref: Ref, email: str | None) -> str:
        if ref.scope == "inputs":
            source = self._pipeline.inputs[ref.name]
            if source.path is None:
                return str(source.url)
            return await self._upload(step, source.path, file_hash(source.path), email,
                                      source.content_type)
        output = self._output_of(ref)
        return await self._upload(step, output.path, output.sha256, email)

    async def _upload(self, step: Step, path: Path, sha: str, email: str | None,
                      content_type: str | None = None) -> str:
        """An upload creates nothing billable, so transient errors are simply waited out.
        An input goes as the type its content called for at validation (a phone's .MPO
        is a JPEG)."""
        async with self._locks.setdefault(sha, anyio.Lock()):
            if sha not in self._urls:
                content_type = content_type or CONTENT_TYPES.get(path.suffix.lower(),
                                                                 "image/png")
                data = path.read_bytes()
                try:
                    asset = await self._patience(step.timeout, lambda: self._client.upload_asset(
                        data, content_type, email=email))
                except ApiError as exc:
                    raise step_failure(exc) from exc
                self._urls[sha] = asset.url
                self._journal.write({"event": "uploaded", "sha256": sha, "url": asset.url})
        return self._urls[sha]


def refs_of(step: Step) -> list[Ref]:
    """The run-time references of a step's fields, each once, in field order."""
    refs: list[Ref] = []
    for value in step.params.values():
        if isinstance(value, Template):
            refs.extend(r for r in value.refs if r not in refs)
    return refs
