"""Declared-parameter helpers shared by the nodes: every setting is a ROS parameter with a descriptor
(description, range, read-only where changing it at runtime would not take effect)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    read_only: bool = True
    choices: tuple = field(default_factory=tuple)


def declare_all(node, params: list[Param]) -> dict[str, Any]:
    """Declare ``params`` on ``node`` and return their current values (after YAML/CLI overrides)."""
    values = {}
    for p in params:
        description = p.description
        if p.choices:
            description += f" One of: {', '.join(map(str, p.choices))}."
        descriptor = ParameterDescriptor(description=description, read_only=p.read_only)
        if p.minimum is not None or p.maximum is not None:
            if isinstance(p.default, bool):
                pass
            elif isinstance(p.default, int):
                descriptor.integer_range = [IntegerRange(
                    from_value=int(p.minimum if p.minimum is not None else -(2 ** 31)),
                    to_value=int(p.maximum if p.maximum is not None else 2 ** 31 - 1), step=0)]
            elif isinstance(p.default, float):
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(p.minimum if p.minimum is not None else -1e300),
                    to_value=float(p.maximum if p.maximum is not None else 1e300), step=0.0)]
        node.declare_parameter(p.name, p.default, descriptor)
        value = node.get_parameter(p.name).value
        if p.choices and value not in p.choices:
            raise ValueError(f"{node.get_name()}: parameter '{p.name}' = {value!r} is not one of {p.choices}")
        values[p.name] = value
    return values


def node_help(executable: str, summary: str, params: list[Param]) -> str:
    """``--help`` of a node executable: how to run it, then every parameter with its default and meaning."""
    lines = [f"usage: ros2 run ov3d_ros {executable} [--ros-args -p NAME:=VALUE | --params-file FILE ...]", "",
             summary.strip(), "", "parameters (ros2 param describe shows the same):"]
    for p in params:
        choices = f" One of: {', '.join(map(str, p.choices))}." if p.choices else ""
        lines.append(f"  {p.name} (default {p.default!r}): {p.description}{choices}")
    return "\n".join(lines)
