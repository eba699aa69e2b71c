"""`make serve`: serves every deployment declared in prefect.yaml from this process.

prefect.yaml stays the single source of deployments; this reads it and calls `prefect.serve`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.schedules import Cron, Interval

ROOT = Path(__file__).resolve().parents[1]


def deployments_from_yaml(path: Path = ROOT / "prefect.yaml") -> list[Any]:
    config = yaml.safe_load(path.read_text())
    result = []
    for entry in config["deployments"]:
        module_path, flow_name = entry["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, flow_name)
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone")) if "cron" in s else Interval(s["interval"])
            for s in entry.get("schedules") or []
        ]
        result.append(
            flow.to_deployment(name=entry["name"], parameters=entry.get("parameters") or {}, schedules=schedules)
        )
    return result


if __name__ == "__main__":
    serve(*deployments_from_yaml())
