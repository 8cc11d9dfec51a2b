"""Turns a CUDA source of prefcal into C++ for the CPU emulation (tests/cuda_emu): kernel launches
``k<<<grid, block, smem, stream>>>(args)`` into
``k << emu::Config(grid, block, smem, stream) << emu::args(args)``, and ``extern __shared__ ... name[];``
into a pointer to the block's dynamic shared memory.

Usage: python rewrite.py IN.cu OUT.cpp
"""

import re
import sys


def rewrite(text: str) -> str:
    launches = text.count("<<<")
    if launches != text.count(">>>("):
        calls = text.count(">>>(")
        raise SystemExit(f"rewrite.py: {launches} '<<<' but {calls} '>>>(': a launch split oddly")
    text = text.replace("<<<", " << ::emu::Config(").replace(">>>(", ") << ::emu::args(")
    text, shared = re.subn(
        r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?unsigned\s+char\s+(\w+)\[\];",
        r"unsigned char* \1 = ::emu::dynamic_smem();",
        text,
    )
    if "extern __shared__" in text:
        raise SystemExit("rewrite.py: an extern __shared__ declaration of another form")
    return text


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        text = rewrite(f.read())
    out = f'#line 1 "{src}"\n{text}'
    try:
        with open(dst, encoding="utf-8") as f:
            if f.read() == out:
                return  # unchanged: keep the timestamp
    except FileNotFoundError:
        pass
    with open(dst, "w", encoding="utf-8") as f:
        f.write(out)


if __name__ == "__main__":
    main()
