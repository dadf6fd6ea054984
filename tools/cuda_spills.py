"""Where the CUDA kernels' register spills sit: in the hot loop, or outside it.

ptxas -v reports spill bytes per kernel but not where the spill stores and loads are.
This reads the SASS of the built extension (cuobjdump, from the CUDA toolkit or the copy
Triton ships) for one architecture and, for each kernel with local-memory traffic (STL /
LDL), prints the loop depth of each such instruction next to the depth of the loop that
holds most of the kernel's FMAs. Loops are found as backward branches (a branch to a
lower address closes a loop spanning the two); depth = how many such spans contain an
instruction. No GPU needed.

    python -m tools.cuda_spills            # sm_90 from pan_ops/_C*.so
    python -m tools.cuda_spills --arch 80
"""

import argparse
import collections
import glob
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def find_cuobjdump() -> "str | None":
    """cuobjdump from PATH or the CUDA toolkit, else the copy Triton ships; None if none."""
    candidates = [shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    try:
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and Path(c).exists()), None)


def kernel_sass(library: Path, arch: int) -> dict[str, list[tuple[int, str]]]:
    """{kernel name: [(address, instruction)]} of the library's sm_<arch> code ({} if it has none)."""
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit or triton's bundled copy)")
    with tempfile.TemporaryDirectory() as tmp:
        listing = subprocess.run([cuobjdump, "--list-elf", str(library)], capture_output=True, text=True)
        if "does not contain device code" in listing.stderr:  # a CPU-only build
            return {}
        listing.check_returncode()
        elf = next((line.split()[-1] for line in listing.stdout.splitlines() if f".sm_{arch}." in line), None)
        if elf is None:
            return {}
        subprocess.run([cuobjdump, "-xelf", elf, str(library)], cwd=tmp, capture_output=True, check=True)
        sass = subprocess.run(
            [cuobjdump, "-sass", str(Path(tmp) / elf)], capture_output=True, text=True, check=True
        ).stdout
    kernels = {}
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = chunk.split("\n", 1)
        kernels[name.strip()] = [(int(m.group(1), 16), m.group(2)) for m in INSTRUCTION.finditer(body)]
    return kernels


def readable(mangled: str) -> str:
    """pool_backward_features_kernel<f16...> from the mangled name, via c++filt when present."""
    demangler = shutil.which("c++filt")
    name = subprocess.run([demangler], input=mangled, capture_output=True, text=True).stdout.strip() if demangler else mangled
    name = re.sub(r"pan_ops::\(anonymous namespace\)::|\(pan_ops::\(anonymous namespace\)::Layout\)", "", name)
    name = re.sub(r"c10::(BFloat16|Half)", r"\1", name)
    return re.sub(r"\(.*\)$", "", name).removeprefix("void ")


def spill_report(instructions: list[tuple[int, str]]):
    """[(spill opcode, loop depth)] and the loop depth holding the most FMAs."""
    loops = []
    for address, text in instructions:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))

    def depth(address):
        return sum(start <= address <= end for start, end in loops)

    spills = [
        (re.search(r"\b(STL|LDL)\S*", text).group(0), depth(address))
        for address, text in instructions
        if re.search(r"\b(STL|LDL)", text)
    ]
    fma = collections.Counter(depth(address) for address, text in instructions if re.search(r"\b[DFH]FMA", text))
    return spills, (fma.most_common(1)[0][0] if fma else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90)")
    parser.add_argument("--library", type=Path, help="default: the built pan_ops/_C*.so")
    args = parser.parse_args(argv)
    library = args.library or next(iter(sorted(glob.glob(str(ROOT / "pan_ops" / "_C*.so")))), None)
    if library is None:
        sys.exit("no built extension (pan_ops/_C*.so): run `make install` with the CUDA sources first")
    kernels = kernel_sass(Path(library), args.arch)
    if not kernels:
        sys.exit(f"{Path(library).name} holds no sm_{args.arch} code")
    print(f"sm_{args.arch} SASS of {Path(library).name}: {len(kernels)} kernels (layout 0 = NCHW, 1 = channels_last)")
    print("| kernel | spill instructions (loop depth) | depth of the FMA loop |")
    print("| --- | --- | --- |")
    clean = 0
    for name, instructions in sorted(kernels.items(), key=lambda item: readable(item[0])):
        spills, hot = spill_report(instructions)
        if not spills:
            clean += 1
            continue
        listed = ", ".join(f"{opcode}@{depth}" for opcode, depth in spills)
        print(f"| {readable(name)} | {listed} | {hot} |")
    print(f"\n{clean} kernels without local-memory traffic")
    return 0


if __name__ == "__main__":
    sys.exit(main())
