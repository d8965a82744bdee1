"""The committed generated code is exactly what the .proto files produce, and every field is documented."""

from __future__ import annotations

import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_the_protos(tmp_path):
    fresh = _generator().generate(tmp_path)
    committed = sorted(p for p in (ROOT / "warmfleet" / "v1").iterdir()
                       if p.suffix in (".py", ".pyi") and p.name != "__init__.py")
    assert [p.name for p in fresh] == [p.name for p in committed], "generated files differ in name"
    for new, old in zip(fresh, committed):
        assert new.read_bytes() == old.read_bytes(), f"{old.name} is stale: run `python protos/generate.py`"


def test_every_proto_field_has_a_comment():
    undocumented = []
    for proto in (ROOT / "protos").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            is_field = re.match(r"\s+(optional |repeated )?[\w.<>, ]+ \w+ = \d+;", line)
            if is_field and not lines[i - 1].strip().startswith("//") and "//" not in line:
                undocumented.append(f"{proto.name}:{i + 1}: {line.strip()}")
    assert not undocumented, "fields without a comment:\n" + "\n".join(undocumented)
