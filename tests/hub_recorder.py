"""A stand-in for `huggingface_hub.HfApi` that records calls instead of uploading (not a test module)."""

from __future__ import annotations

from pathlib import Path


class RecordingApi:
    """Stands in for HfApi: records the calls and what the upload folder held."""

    def __init__(self, fail_with: BaseException | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail_with = fail_with

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        if self.fail_with is not None:
            raise self.fail_with
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        self.calls.append(("upload_folder", {**kwargs, "files": sorted(p.name for p in folder.iterdir())}))
        return "https://huggingface.co/me/detr-site/commit/abc123"
