"""A stand-in for `huggingface_hub.HfApi` that records calls instead of uploading (not a test module).

Every recorded call is first bound against the signature of the real `HfApi` method
(`inspect.signature(...).bind`), so a renamed or misspelt argument raises `TypeError` here as it would
against the Hub client, instead of being recorded and passing.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi


def bind_to_hfapi(method: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call to `HfApi.<method>`, by name, as the real method would receive them.

    Raises:
        TypeError: an argument the real method does not take, or a missing required one.
    """
    signature = inspect.signature(getattr(HfApi, method))
    bound = signature.bind(None, *args, **kwargs)  # None stands for `self`
    return {name: value for name, value in bound.arguments.items() if name != "self"}


class RecordingApi:
    """Stands in for HfApi: records the calls (checked against HfApi's signatures) and the uploaded files."""

    def __init__(self, fail_with: BaseException | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail_with = fail_with

    def _record(self, method: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        arguments = bind_to_hfapi(method, args, kwargs)
        self.calls.append((method, arguments))
        return arguments

    def create_repo(self, *args, **kwargs):
        arguments = self._record("create_repo", args, kwargs)
        if self.fail_with is not None:
            raise self.fail_with
        return f"https://huggingface.co/{arguments['repo_id']}"

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", args, kwargs)

    def upload_folder(self, *args, **kwargs):
        arguments = self._record("upload_folder", args, kwargs)
        folder = Path(arguments["folder_path"])
        arguments["files"] = sorted(p.name for p in folder.iterdir())
        return "https://huggingface.co/me/detr-site/commit/abc123"
