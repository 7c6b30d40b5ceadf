"""Configuration of SSH to the nodes: who logs in, with which key, how host keys are trusted.

``piman ssh run``, ``piman ssh push-key``, agentless monitoring (``monitor: ssh`` on a node) and
the ``ssh-reboot`` power driver all use these settings::

    ssh:
      user: pi                       # a node's `ssh_user:` wins, then its environment's user
      key_file: /var/lib/piman/ssh/id_ed25519   # the fleet key (piman ssh keygen), data_dir's
      host_keys: tofu                # tofu: learn a key on first contact | strict: known keys only
      connect_timeout: 10s
      command_timeout: 60s
      concurrency: 100
      password_file: /etc/piman/image-password  # the image's default password, for push-key only
      push_key: {use_password: true, disable_password: true}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from piman.config.types import Duration

__all__ = ["PushKeyPolicy", "SshSettings"]


class PushKeyPolicy(BaseModel):
    """What ``piman ssh push-key`` may do when the fleet key is refused (the orchestration seed's
    policy: log in once with the image's password, install the key, turn password login off)."""

    model_config = ConfigDict(extra="forbid")

    use_password: bool = True  # log in with the configured password when the key is refused
    disable_password: bool = True  # then turn sshd's password login off on that node


class SshSettings(BaseModel):
    """SSH to the nodes. Absent from the file: the defaults below (user ``pi``, the fleet key in
    ``data_dir/ssh``, trust on first use)."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(default="pi", min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_.-]*$")
    port: int = Field(default=22, ge=1, le=65535)
    key_file: Path | None = None  # default: data_dir/ssh/id_ed25519
    known_hosts: Path | None = None  # default: data_dir/ssh/known_hosts
    host_keys: Literal["tofu", "strict"] = "tofu"
    connect_timeout: Duration = 10.0
    command_timeout: Duration = 60.0
    concurrency: int = Field(default=100, ge=1, le=1000)
    max_output: int = Field(default=1 << 20, ge=1024)  # bytes kept per host and stream
    password: SecretStr | None = None  # the image's default password (push-key only)
    password_file: Path | None = None  # or read from this file (one line)
    push_key: PushKeyPolicy = Field(default_factory=PushKeyPolicy)

    def key_path(self, data_dir: Path) -> Path:
        """The fleet key's private half."""
        return self.key_file or data_dir / "ssh" / "id_ed25519"

    def known_hosts_path(self, data_dir: Path) -> Path:
        """Where learnt host keys are kept (OpenSSH's known_hosts format)."""
        return self.known_hosts or data_dir / "ssh" / "known_hosts"
