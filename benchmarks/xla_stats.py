"""What XLA reports about one compiled program: FLOPs, memory, and bytes moved by collectives.

`compiled_flops` and `compiled_memory_bytes` read XLA's cost and memory analyses.
`collective_bytes(compiled.as_text())` sums, per collective kind, the result bytes of every
collective the program executes on one device (the HLO of a `jax.jit` over a mesh is the
per-device SPMD program): an all-gather counts the gathered array it produces.

- Collectives inside a `while` body (a `lax.scan`, e.g. gradient accumulation over micro-batches)
  count once per iteration when XLA recorded the trip count; both branches of a conditional count
  (an upper bound).
- Async pairs (`all-gather-start` / `all-gather-done`, as on GPU and TPU) count once, at `-done`.
- XLA:CPU has no 16-bit float collectives: it converts a bf16 operand to f32, gathers, and
  converts back. Such a collective counts at the width of the value the program gathers (2 bytes
  per element), what GPU and TPU move; `widened_bytes` reports what the widening added.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
               "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16}

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\((.*)\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(
    r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(\(.*?\)|\S+)\s+([a-z][\w\-]*)\((.*?)\)(.*)$")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
_CALLEE = re.compile(
    r"\b(body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_PARAM = re.compile(r"([\w.\-]+):\s*([a-z]\w*)\[")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: tuple[str, ...]  # Operand instruction names.
    attributes: str


def _itemsize(dtype: str) -> int | None:
    return 1 if dtype.startswith("f8") else DTYPE_BYTES.get(dtype)


def shape_bytes(shape: str, itemsize: int | None = None) -> int:
    """Bytes of an HLO shape string (an array `f32[8,128]{1,0}` or a tuple of arrays); with
    `itemsize`, counted at that many bytes per element instead of the dtype's."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        size = itemsize or _itemsize(dtype)
        if size is None:  # token, opaque: no data.
            continue
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * size
    return total


@dataclasses.dataclass
class _Module:
    computations: dict[str, list[Instruction]]
    params: dict[str, dict[str, str]]  # Computation -> parameter name -> dtype.
    entry: str
    by_name: dict[str, tuple[str, Instruction]]  # Instruction name -> (computation, it).
    roots: dict[str, Instruction]


def _parse(hlo: str) -> _Module:
    module = _Module({}, {}, "", {}, {})
    current = None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            module.computations[current] = []
            module.params[current] = dict(_PARAM.findall(header.group(3)))
            if header.group(1):
                module.entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        found = _INSTRUCTION.match(line) if current is not None else None
        if found:
            root, name, shape, opcode, operands, attributes = found.groups()
            names = tuple(re.findall(r"%([\w.\-]+)", operands)
                          or (x.strip() for x in operands.split(",") if x.strip()))
            inst = Instruction(name, shape, opcode, names, attributes)
            module.computations[current].append(inst)
            module.by_name[name] = (current, inst)
            if root:
                module.roots[current] = inst
    if not module.entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return module


def _dtype(shape: str) -> str:
    found = _ARRAY.search(shape)
    return found.group(1) if found else ""


def _narrowed_itemsize(module: _Module, inst: Instruction) -> int | None:
    """Bytes per element the program asked for when the backend widened a float operand with a
    convert (plain, or a fusion whose root converts one of its parameters) before `inst`."""
    if not inst.operands or inst.operands[0] not in module.by_name:
        return None
    _, producer = module.by_name[inst.operands[0]]
    source = None
    if producer.opcode == "convert" and producer.operands[0] in module.by_name:
        source = _dtype(module.by_name[producer.operands[0]][1].shape)
    elif producer.opcode == "fusion":
        called = _CALLEE.search(producer.attributes)
        root = module.roots.get(called.group(2)) if called else None
        if root is not None and root.opcode == "convert" and root.operands:
            source = module.params[called.group(2)].get(root.operands[0])
    wide, narrow = _itemsize(_dtype(inst.shape)), _itemsize(source or "")
    floats = _dtype(inst.shape).startswith(("f", "bf")) and (source or "").startswith(("f", "bf"))
    return narrow if floats and narrow and wide and narrow < wide else None


def _callees(inst: Instruction) -> list[tuple[str, int]]:
    """(computation, runs per execution of `inst`) for the computations `inst` calls."""
    trip = _TRIP_COUNT.search(inst.attributes)
    repeat = int(trip.group(1)) if trip and inst.opcode == "while" else 1
    out = [(name, repeat if kind in ("body", "condition") else 1)
           for kind, name in _CALLEE.findall(inst.attributes)]
    for group in _BRANCHES.findall(inst.attributes):
        out += [(name.strip().lstrip("%"), 1) for name in group.split(",") if name.strip()]
    return out


def _kind(inst: Instruction) -> str | None:
    kind = inst.opcode.removesuffix("-done")
    return kind if kind in COLLECTIVES and not inst.opcode.endswith("-start") else None


def collective_bytes(hlo: str, undo_widening: bool = True) -> dict[str, Any]:
    """{kind: bytes per execution of the entry computation} for COLLECTIVES, plus `widened_bytes`
    (what XLA:CPU's f32 widening of 16-bit collectives added on top), `ops` (collective
    instructions in the text) and `unknown_trip_counts` (while loops counted once because XLA
    recorded no trip count). `undo_widening=False` counts every collective at its own width: for
    HLO taken before the widening, where a convert before a collective is the program's own."""
    module = _parse(hlo)
    unknown = set()

    @functools.cache
    def totals(name: str) -> tuple[int, ...]:
        sums = [0] * (len(COLLECTIVES) + 1)  # The last slot: widening.
        for inst in module.computations.get(name, ()):
            kind = _kind(inst)
            if kind:
                narrow = _narrowed_itemsize(module, inst) if undo_widening else None
                counted = shape_bytes(inst.shape, narrow)
                sums[COLLECTIVES.index(kind)] += counted
                sums[-1] += shape_bytes(inst.shape) - counted
            if inst.opcode == "while" and not _TRIP_COUNT.search(inst.attributes):
                unknown.add(inst.name)
            for callee, times in _callees(inst):
                sums = [s + times * b for s, b in zip(sums, totals(callee), strict=True)]
        return tuple(sums)

    sums = totals(module.entry)
    result: dict[str, Any] = dict(zip(COLLECTIVES, sums, strict=False))
    result["widened_bytes"] = sums[-1]
    result["ops"] = sum(bool(_kind(i)) for insts in module.computations.values() for i in insts)
    result["unknown_trip_counts"] = len(unknown)
    return result


def compile_for_collectives(lowered: Any) -> tuple[Any, str, str]:
    """Compiles `lowered`; returns (compiled, HLO text to count collectives in, which HLO it is).

    On CPU the text is the program as partitioned and optimised just before XLA:CPU's
    `float-normalization-bf16` pass: that pass widens every bf16 collective to f32 and a later
    simplification drops the f32 -> bf16 -> f32 round trip, so in the final CPU program a weight
    cast to bf16 before its all-gather is gathered in f32 again and the cast is invisible. GPU
    and TPU keep bf16 collectives, so elsewhere the final program is read.
    """
    import glob
    import os
    import tempfile

    import jax

    if jax.default_backend() != "cpu":
        compiled = lowered.compile()
        return compiled, compiled.as_text(), "final"
    with tempfile.TemporaryDirectory() as dump:
        compiled = lowered.compile(compiler_options={
            "xla_dump_to": dump, "xla_dump_hlo_pass_re": "float-normalization-bf16"})
        found = glob.glob(os.path.join(dump, "*before_float-normalization-bf16.txt"))
        if not found:
            return compiled, compiled.as_text(), "final"
        with open(max(found, key=os.path.getsize)) as f:
            return compiled, f.read(), "before XLA:CPU's bf16 widening"


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled function (per device), from XLA's cost analysis."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # Some backends do not implement it.
        return None
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def compiled_memory_bytes(compiled: Any) -> int | None:
    """Per-device bytes XLA's memory analysis assigns one call: arguments + outputs - donated
    (aliased) + temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # Not every backend implements it.
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)
