"""What a service dir says, as the laptop reads it: the chain's state and
every job's record, from the JSON of `python3 -m remote_agent show`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from remote_agent import endpoint
from remote_agent.chain import ChainState
from remote_agent.endpoint import Endpoint


@dataclass
class Snapshot:
    """What the service dir says: chain state and records by job id."""

    chain: ChainState
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


_CHAIN_TYPES = {"failed_jobs": int, "stopped": bool, "reason": str}


def parse_show(data: dict) -> Snapshot:
    """The JSON of `python3 -m remote_agent show`, every type checked: a
    stopped mark of "false" must not read as true. A bad record is an error
    for that record only."""
    chain, raws, errors = data["chain"], data["endpoints"], data["errors"]
    for key, kind in _CHAIN_TYPES.items():
        if not isinstance(chain[key], kind):
            raise TypeError(f"chain {key} is a {type(chain[key]).__name__}")
    if not isinstance(raws, list) or not isinstance(errors, dict):
        raise TypeError("endpoints is not a list or errors not an object")
    state = ChainState(**{key: chain[key] for key in _CHAIN_TYPES})
    records, errors = {}, {str(k): str(v) for k, v in errors.items()}
    for raw in raws:
        try:
            record = endpoint.loads(json.dumps(raw))
            records[record.job_id] = record
        except endpoint.EndpointError as exc:
            errors[str(raw.get("job_id") if isinstance(raw, dict) else raw)[:40]] = str(exc)
    return Snapshot(state, records, errors)
