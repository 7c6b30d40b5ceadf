"""Configuration of access control: TLS for HTTP, the host names the manager answers to, sessions.

Accounts themselves live in the store (``piman user …``), never in the configuration.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from piman.config.types import Duration

__all__ = ["AccessSettings", "TlsSettings"]


class TlsSettings(BaseModel):
    """``manager.tls`` — serve HTTPS with this certificate chain and key (PEM files)."""

    model_config = ConfigDict(extra="forbid")

    cert: Path
    key: Path


class AccessSettings(BaseModel):
    """``access:`` — browser sessions and the login throttle (all optional)."""

    model_config = ConfigDict(extra="forbid")

    session_idle: Duration = 8 * 3600.0  # a session unused this long ends
    session_max: Duration = 7 * 86400.0  # a session ends this long after login, used or not
    login_attempts: int = Field(default=5, ge=1, le=1000)  # failures allowed per window …
    login_window: Duration = 300.0  # … per user name and per client address

    @field_validator("session_idle", "session_max", "login_window")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 s")
        return value
