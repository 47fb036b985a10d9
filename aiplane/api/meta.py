"""What every resource shares: apiVersion, kind, metadata, and the strict base model."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

GROUP = "aiplane.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# RFC 1123 label: what Kubernetes requires of names that become Service names.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Strict(BaseModel):
    """Base of every spec model: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ObjectMeta(Strict):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    namespace: str | None = Field(default=None, max_length=63, pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Resource(Strict):
    """A top-level object: ``apiVersion``, ``kind``, ``metadata``, ``spec``."""

    kind_name: ClassVar[str] = ""
    plural: ClassVar[str] = ""
    short_names: ClassVar[tuple[str, ...]] = ()
    namespaced: ClassVar[bool] = True

    api_version: str = Field(default=API_VERSION, alias="apiVersion", pattern=f"^{API_VERSION}$")
    kind: str
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def ref(self) -> str:
        """``Kind/name``: how errors, logs and the CLI name an object."""
        return f"{self.kind}/{self.metadata.name}"

    def to_manifest(self) -> dict[str, object]:
        """The object as the YAML a user would write (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
