"""Storage credentials for cluster renders, kept out of Prefect's records.

Flow-run parameters are stored in Prefect's database and shown in its UI, so a secret storage option
(key, secret, token...) must never be one. Instead the command puts the secret options into a Prefect
`Secret` block (stored as a secret: the API masks it unless asked for secrets) under a one-off name,
passes the flow only that name, and deletes the block when the render ends. Deployments name a block the
operator made (`--credentials-block`), or rely on the workers' own environment and profiles.
"""

from __future__ import annotations

import json
import uuid


def stash(secret: dict) -> str:
    """Save `secret` (storage options) as a new Secret block; returns its name."""
    from prefect.blocks.system import Secret

    name = f"supergen-credentials-{uuid.uuid4().hex[:12]}"
    Secret(value=json.dumps(secret)).save(name)
    return name


def load(name: str) -> dict:
    """The storage options a Secret block holds (JSON object)."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError as e:
        raise ValueError(f"no Prefect Secret block named {name!r}: {e}") from None
    options = json.loads(value) if isinstance(value, str) else value
    if not isinstance(options, dict):
        raise ValueError(f"Secret block {name!r} must hold a JSON object of storage options")
    return options


def drop(name: str) -> None:
    from prefect.blocks.system import Secret

    try:
        Secret.delete(name)
    except Exception:  # already gone; nothing secret is left either way
        pass
