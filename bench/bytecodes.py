"""Python bytecodes per function, counted with `sys.settrace` opcode events: a figure that moves
little between runs where CPU seconds here move by ±20 %, and that names the Python function
(callgrind cannot). Used by `bench/recovery_instructions.py --bytecodes` and, in the chat
scenario's nodes, by `bench/cluster_node.py` (`COUP_BENCH_BYTECODES`, `bench/chat_bytecodes.py`)."""

from __future__ import annotations

import collections
from pathlib import Path
from types import FrameType
from typing import Any

TraceFunction = Any


def tracer(tally: collections.Counter[str]) -> TraceFunction:
    """A trace function for `sys.settrace` that counts each bytecode run in `tally`, by
    ``FILE:FIRSTLINE NAME`` of its function."""

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            tally[f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_name}"] += 1
        return trace

    return trace


def print_added(off: dict[str, float], on: dict[str, float], per: str, top: int) -> None:
    """Bytecodes per `per` with recovery off and on, and the functions that differ most."""
    total_off, total_on = sum(off.values()), sum(on.values())
    print(f"bytecodes per {per}: off {total_off:,.0f}, on {total_on:,.0f}: "
          f"added {total_on - total_off:,.0f} ({(total_on - total_off) / total_off * 100:+.1f} %)")
    rows = sorted(((on.get(k, 0.0) - off.get(k, 0.0), k) for k in set(off) | set(on)), reverse=True)
    print("  added  function (on minus off)")
    for added, key in [*rows[:top], *rows[-max(3, top // 4):]]:
        print(f"{added:7.1f}  {key}")
