"""Regenerate the Python code for the warmfleet.v1 protos: `python protos/generate.py`.

Generated code lands in warmfleet/v1/ and is committed; never edit it by hand. tests/unit/test_protos.py
regenerates into a temporary folder and checks the committed files are identical.
"""

from __future__ import annotations

import pathlib
import sys

PROTOS = pathlib.Path(__file__).resolve().parent
ROOT = PROTOS.parent


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Compile every .proto under protos/ into ``out_dir``; returns the files written."""
    from grpc_tools import protoc

    include = pathlib.Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *sources]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted(p for p in (out_dir / "warmfleet" / "v1").iterdir() if p.name != "__init__.py")


if __name__ == "__main__":
    written = generate(ROOT)
    print("\n".join(str(p.relative_to(ROOT)) for p in written))
    sys.exit(0)
