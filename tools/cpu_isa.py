"""Which x86-64 instruction encodings each part of the compiled op library holds: legacy (up
to SSE4), VEX (AVX, AVX2, FMA) or EVEX (AVX-512), read from the first opcode byte of each
instruction in GNU objdump's disassembly.

The CPU kernel is compiled once per level (csrc/cpu/weighted_pool_cpu.h). A function
belongs to a level when its name is in the level's namespace, pan_ops::cpu_<level>, or when
it is a local symbol of the level's object file: the linker lists each object's local symbols
after a FILE symbol, and a level's object also holds local clones of header functions and a
static initialiser. Every other function is baseline: the rest of the library, and the one
copy the linker kept of each inline function that several objects compiled (std::vector,
c10). "Import-time" code is what the static initialisers run, directly or through direct
calls inside the library. Also here: which levels this CPU can run (runnable_levels), for the
tests and benchmarks that force each level.

    python -m tools.cpu_isa                   # the pan_ops._C that imports here
    python -m tools.cpu_isa path/to/libpan_ops.so
"""

import argparse
import collections
import dataclasses
import re
import subprocess
from pathlib import Path

# The levels of a dispatching build, lowest first, as pan_ops.cpu_capability() names them.
LEVELS = ("default", "avx2", "avx512")
# The CPU features ATen requires before it reports each capability, as /proc/cpuinfo names them.
REQUIRED_FLAGS = {
    "default": set(),
    "avx2": {"avx2", "fma"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
}
# Segment-override and address-size prefixes may precede a VEX or EVEX prefix; nothing else may.
PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x67}
ENCODINGS = ("legacy", "vex", "evex")
# The level namespace in a demangled name, or in a mangled one (objdump leaves some clones mangled).
LEVEL_NAMESPACE = re.compile(r"pan_ops::cpu_(\w+)::|7pan_ops(\d+)cpu_")
SYMBOL = re.compile(r"^([0-9a-f]+) (.{7}) (\S+)\t([0-9a-f]+)\s+(.*)$")
FUNCTION_START = re.compile(r"^([0-9a-f]+) <.*>:$")
INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t(.*)$")
DIRECT_BRANCH = re.compile(r"^(?:call|jmp)\s+([0-9a-f]+) <")


@dataclasses.dataclass
class Function:
    name: str
    address: int
    level: str  # "baseline", or the name of a level of the CPU kernel
    encodings: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    callees: set = dataclasses.field(default_factory=set)  # addresses of direct call and jump targets


def cpuinfo(field: str) -> str:
    """The first value of a field of /proc/cpuinfo (Linux; x86 has "flags" and "model name"), or ""."""
    try:
        with open("/proc/cpuinfo") as lines:
            return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == field), "")
    except OSError:
        return ""


def runnable_levels() -> list:
    """The levels whose features this CPU has (only the baseline where /proc/cpuinfo has no x86 flags)."""
    flags = set(cpuinfo("flags").split())
    return [level for level in LEVELS if REQUIRED_FLAGS[level] <= flags]


def level_of_capability(capability: str) -> str:
    """The level a torch CPU capability (torch.backends.cpu.get_cpu_capability()) allows; another
    architecture's (e.g. SVE256) allows the baseline."""
    return capability.lower() if capability.lower() in LEVELS else "default"


def named_level(name: str) -> "str | None":
    """The level whose namespace the name is in, if any."""
    match = LEVEL_NAMESPACE.search(name)
    if match is None:
        return None
    return match.group(1) or name[match.end() : match.end() + int(match.group(2)) - len("cpu_")]


def encoding(raw: bytes) -> str:
    opcode = next((byte for byte in raw if byte not in PREFIXES), 0)
    return {0xC4: "vex", 0xC5: "vex", 0x62: "evex"}.get(opcode, "legacy")


def _objdump(*args: str) -> list:
    return subprocess.run(["objdump", *args], capture_output=True, text=True, check=True).stdout.splitlines()


def functions(library) -> dict:
    """{address: Function} for every function of the library's symbol table, with the encodings
    of its instructions and its direct callees."""
    found, file_symbols = {}, []  # file_symbols: the local functions listed after each FILE symbol
    for line in _objdump("-t", "-C", "-w", str(library)):
        match = SYMBOL.match(line)
        if match is None:
            continue
        value, flags, _, _, name = match.groups()
        if flags[5:7] == "df":
            file_symbols.append([])
        elif flags[6] == "F" and int(value, 16) not in found:
            function = Function(name, int(value, 16), level=named_level(name) or "baseline")
            found[function.address] = function
            if flags[0] == "l" and file_symbols:
                file_symbols[-1].append(function)
    for local in file_symbols:
        levels = {function.level for function in local} - {"baseline"}
        if len(levels) == 1:  # an object of one level: its clones and initialiser are that level's too
            for function in local:
                function.level = next(iter(levels))
    current = None
    for line in _objdump("-d", "-w", "--insn-width=15", str(library)):
        start = FUNCTION_START.match(line)
        if start:
            current = found.get(int(start.group(1), 16))
            continue
        instruction = INSTRUCTION.match(line)
        if current is None or instruction is None:
            continue
        _, raw, text = instruction.groups()
        current.encodings[encoding(bytes.fromhex(raw))] += 1
        branch = DIRECT_BRANCH.match(text)
        if branch:
            current.callees.add(int(branch.group(1), 16))
    return found


def import_time(found: dict) -> list:
    """The functions the static initialisers run: themselves and what they call directly. (Their
    calls through the PLT reach other libraries or this one's exported functions, which are all
    baseline: no level exports a function.)"""
    pending = [f.address for f in found.values() if f.name.startswith("_GLOBAL__sub_I_")]
    reached = set()
    while pending:
        address = pending.pop()
        if address in found and address not in reached:
            reached.add(address)
            pending.extend(found[address].callees)
    return [found[address] for address in sorted(reached)]


def by_level(found: dict) -> dict:
    """{level: Counter of encodings}, with the number of functions under "functions"."""
    totals = collections.defaultdict(collections.Counter)
    for function in found.values():
        totals[function.level].update(function.encodings)
        totals[function.level]["functions"] += 1
    return dict(totals)


def with_encoding(functions_, *encodings: str) -> list:
    """Names of the functions that hold any instruction of these encodings."""
    return [f.name for f in functions_ if any(f.encodings[e] for e in encodings)]


def problems(found: dict) -> list:
    """What keeps a dispatching build (levels default, avx2, avx512) from running on any x86-64
    CPU at the level torch picks, one line each; empty when nothing does. The baseline, the
    default level and the import-time code hold only legacy encodings; the avx2 level no EVEX;
    and each level above the baseline holds its own encoding, as a sign that its flags applied."""
    levels = by_level(found)
    found_levels = set(levels) - {"baseline"}
    if found_levels != set(LEVELS):
        return [f"the CPU kernel's levels are {sorted(found_levels)}, not {', '.join(LEVELS)}"]
    at_import = import_time(found)
    if not at_import:  # the op's registrations at least run at import
        return ["no static initialiser found (_GLOBAL__sub_I_*): the import-time code cannot be checked"]
    lines = []
    for part, functions_ in (
        ("baseline", [f for f in found.values() if f.level in ("baseline", "default")]),
        ("import-time", at_import),
    ):
        lines += [f"{part} code with VEX or EVEX: {name}" for name in with_encoding(functions_, "vex", "evex")]
    lines += [f"avx2 code with EVEX: {f.name}" for f in found.values() if f.level == "avx2" and f.encodings["evex"]]
    for level, own in (("avx2", "vex"), ("avx512", "evex")):
        if not levels[level][own]:
            lines.append(f"level {level} holds no {own.upper()} instruction: compiled without its flags?")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", nargs="?", help="default: the pan_ops._C that imports here")
    args = parser.parse_args(argv)
    if args.library is None:
        import importlib.util

        args.library = importlib.util.find_spec("pan_ops._C").origin
    found = functions(Path(args.library))
    print(f"{args.library}\n\n| part | functions | legacy | VEX | EVEX |\n| --- | ---: | ---: | ---: | ---: |")
    parts = {**by_level(found), "import-time": collections.Counter()}
    for function in import_time(found):
        parts["import-time"].update({**function.encodings, "functions": 1})
    for part, counts in parts.items():
        print(f"| {part} | {counts['functions']} | " + " | ".join(str(counts[e]) for e in ENCODINGS) + " |")
    print("\n".join(problems(found)) or "\nbaseline and import-time code: legacy encodings only; each level holds its own")


if __name__ == "__main__":
    main()
