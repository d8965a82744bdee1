"""The Cog runner's pure parts: coglet's snapshots into events (``_Stream``), outputs and files, inputs as
coglet takes them, Secret redaction, bundles materialised on a node, its processes' memory
(``node.metrics``), coglet's log lines, and package environments (``runners.cog.env``)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from node.metrics import process_tree, rss_bytes
from runners.base import NodeResources
from runners.cog.config import CogConfig
from runners.cog.env import DONE_MARKER, InstallFailed, ensure_environment
from runners.cog.process import OutputReader
from runners.cog.runner import (
    _file_from_url,
    _output,
    _Stream,
    _to_cog,
    materialize_bundle,
    secret_fields,
)
from runners.cog.schema import input_json_schema
from runners.schema import SECRET_MASK, InputValidator
from warmfleet.bundle import write_bundle
from warmfleet.domain import FileData, LogLine, Output, OutputChunk

ITERATOR = {"type": "array", "items": {"type": "string"}, "x-cog-array-type": "iterator"}
CONCATENATE = {**ITERATOR, "x-cog-array-display": "concatenate"}
FILE = {"type": "string", "format": "uri"}
PNG = b"\x89PNG\r\n\x1a\n fake image"


def data_url(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def snapshot(output: list | None = None, logs: str = "") -> dict:
    return {"status": "processing", "output": output, "logs": logs}


def feed(stream: _Stream, *snapshots: dict) -> list:
    return [event for doc in snapshots for event in stream.update(doc)]


# _Stream: log lines as printed, output items from snapshots, once each


def test_out_of_order_and_repeated_snapshots_give_each_item_once_in_order():
    stream = _Stream(ITERATOR, [])
    s1, s2, s3 = (snapshot(["a", "b", "c"][:n]) for n in (1, 2, 3))
    assert feed(stream, s1, s3, s2, s1, s3) == [OutputChunk(value=v, joinable=False) for v in "abc"]


def test_log_lines_come_as_printed_and_the_final_logs_add_only_what_did_not():
    stream = _Stream(ITERATOR, [])
    assert stream.take("log", "one") == [LogLine("one")]
    assert stream.take("log", "two") == [LogLine("two")]
    assert stream.finish("one\ntwo\nprinted as it failed\n") == [LogLine("printed as it failed")]
    assert stream.finish("one\ntwo\nprinted as it failed\n") == []


def test_final_logs_that_hold_nothing_new_add_nothing():
    stream = _Stream(ITERATOR, [])
    stream.take("log", "one")
    assert stream.finish("one\n") == [] and stream.finish(None) == []


def test_a_snapshot_is_an_update_of_outputs_only():
    stream = _Stream(ITERATOR, [])
    assert stream.take("output", snapshot(["x"], logs="ignored\n")) == [OutputChunk(value="x", joinable=False)]


def test_iterator_items_are_separate_chunks_and_concatenate_items_are_joinable():
    items = snapshot(["Hel", "lo"])
    assert [c.joinable for c in feed(_Stream(ITERATOR, []), items)] == [False, False]
    assert feed(_Stream(CONCATENATE, []), items) == [OutputChunk(value="Hel"), OutputChunk(value="lo")]


def test_only_an_iterator_output_is_streamed():
    assert _Stream(ITERATOR, []).streams_output and _Stream(CONCATENATE, []).streams_output
    listed = _Stream({"type": "array", "items": {"type": "string"}}, [])
    assert not listed.streams_output and feed(listed, snapshot(["a", "b"])) == []
    assert not _Stream(FILE, []).streams_output


def test_file_items_of_an_iterator_arrive_as_decoded_files():
    stream = _Stream({**ITERATOR, "items": FILE}, [])
    chunks = feed(stream, snapshot([data_url(PNG, "image/png"), data_url(b"RIFF", "audio/wav")]))
    got = [(c.file.data, c.file.content_type) for c in chunks]
    assert got == [(PNG, "image/png"), (b"RIFF", "audio/wav")]
    assert chunks[0].file.name == "output-0.png"
    assert all(c.value is None for c in chunks)


def test_secret_values_are_scrubbed_from_log_lines_final_logs_and_errors():
    stream = _Stream(ITERATOR, ["hunter2", "tok-9"])
    assert stream.take("log", "using hunter2 and tok-9") == [LogLine(f"using {SECRET_MASK} and {SECRET_MASK}")]
    assert stream.finish("x\nlast hunter2\n") == [LogLine(f"last {SECRET_MASK}")]
    assert stream.scrub("auth failed for hunter2") == f"auth failed for {SECRET_MASK}"


def test_a_secret_spanning_lines_is_scrubbed_from_each_line_and_from_the_final_logs():
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBg\n-----END KEY-----"
    stream = _Stream(ITERATOR, [key])
    printed = [e for line in f"loaded {key}".splitlines() for e in stream.take("log", line)]
    assert "MIIEvQIBADANBg" not in "\n".join(line.text for line in printed)
    assert "MIIEvQIBADANBg" not in str(_Stream(ITERATOR, [key]).finish(f"loaded {key}\n"))


def test_a_secret_that_begins_with_another_is_masked_whole():
    stream = _Stream(ITERATOR, ["abc", "abcdef-123"])
    assert stream.scrub("token abcdef-123") == f"token {SECRET_MASK}"


def test_secret_fields_are_the_inputs_cog_types_as_secret():
    openapi = {"components": {"schemas": {"Input": {"type": "object", "properties": {
        "token": {"type": "string", "format": "password", "writeOnly": True, "x-cog-secret": True},
        "key": {"type": "string", "x-cog-secret": True},
        "prompt": {"type": "string"}}}}}}
    assert secret_fields(openapi) == ["token", "key"]


# The final output


def test_a_single_path_output_is_one_file():
    out = _output(data_url(PNG, "image/png"), FILE)
    assert out.value is None
    assert [(f.data, f.content_type) for f in out.files] == [(PNG, "image/png")]


def test_a_list_of_paths_is_the_files_in_order():
    urls = [data_url(b"1", "text/plain"), data_url(b"2", "image/jpeg")]
    out = _output(urls, {"type": "array", "items": FILE})
    assert out.value is None
    assert [(f.data, f.name) for f in out.files] == [(b"1", "output-0.txt"), (b"2", "output-1.jpg")]


@pytest.mark.parametrize(("value", "schema"), [
    ("hello", {"type": "string"}),
    (3.5, {"type": "number"}),
    ({"text": "hi", "score": 1}, {"type": "object", "properties": {"text": {"type": "string"}}}),
    (["a", "b"], {"type": "array", "items": {"type": "string"}}),
])
def test_a_value_that_is_no_file_is_the_json_value(value, schema):
    assert _output(value, schema) == Output(value=value)


# Files to and from coglet


def test_files_anywhere_in_an_input_become_data_urls_that_decode_back():
    image = FileData(PNG, "image/png", "in.png")
    blob = FileData(b"\x00\xff", "", "raw")
    value = _to_cog({"image": image, "n": 2, "many": [blob, {"deep": image}], "text": "data:not-a-file"})
    assert value["n"] == 2 and value["text"] == "data:not-a-file"
    image_back = _file_from_url(value["many"][1]["deep"], 0)
    blob_back = _file_from_url(value["many"][0], 1)
    assert (image_back.data, image_back.content_type) == (PNG, "image/png")
    assert (blob_back.data, blob_back.content_type) == (b"\x00\xff", "application/octet-stream")
    assert _file_from_url(value["image"], 0).data == PNG


def test_a_url_that_is_not_a_data_url_becomes_a_uri_list_file():
    got = _file_from_url("https://example.com/out.png", 3)
    assert got.data == b"https://example.com/out.png"
    assert (got.content_type, got.name) == ("text/uri-list", "output-3.url")


def test_a_data_url_without_base64_is_its_text():
    got = _file_from_url("data:text/plain,hello", 0)
    assert (got.data, got.content_type) == (b"hello", "text/plain")


# Secrets in stored inputs


def secret_validator() -> InputValidator:
    doc = {"components": {"schemas": {"Input": {"type": "object", "properties": {
        "x": {"type": "integer", "title": "X", "x-order": 0},
        "token": {"type": "string", "format": "password", "writeOnly": True, "x-cog-secret": True,
                  "x-order": 1}}},
        "Output": {"type": "string"}}}}
    return InputValidator(input_json_schema(doc))


def test_redact_masks_secrets_and_leaves_the_input_itself_alone():
    validator = secret_validator()
    given = {"x": 1, "token": "s3cr3t"}
    assert validator.redact(given) == {"x": 1, "token": SECRET_MASK}
    assert given == {"x": 1, "token": "s3cr3t"}


def test_redact_leaves_an_input_without_its_secret_as_it_is():
    validator = secret_validator()
    assert validator.redact({"x": 1}) == {"x": 1}
    assert validator.redact({"x": 1, "token": None}) == {"x": 1, "token": None}


# Bundles on a node


class FakeBundles:
    """A bundle source that writes the bytes it holds for a digest, and counts its fetches."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.fetches: list[str] = []

    def fetch(self, digest: str, dest: Path) -> None:
        self.fetches.append(digest)
        dest.write_bytes(self.blobs[digest])


def a_bundle(tmp_path: Path) -> tuple[str, bytes]:
    root = tmp_path / "model"
    root.mkdir()
    (root / "predict.py").write_text("class Predictor: ...\n")
    (root / "cog.yaml").write_text('predict: "predict.py:Predictor"\n')
    out = io.BytesIO()
    digest, _ = write_bundle(root, out)
    return digest, out.getvalue()


OPENAPI = {"components": {"schemas": {"Input": {"type": "object", "properties": {}},
                                      "Output": {"type": "string"}}}}


def test_materialize_unpacks_the_bundle_with_cogs_schema_and_fetches_once(tmp_path):
    digest, data = a_bundle(tmp_path)
    source = FakeBundles({digest: data})
    node = NodeResources(cache_dir=tmp_path / "cache", bundles=source)
    first = materialize_bundle(node, digest, OPENAPI)
    second = materialize_bundle(node, digest, OPENAPI)
    assert first == second == tmp_path / "cache" / "cog" / "bundles" / digest
    assert (first / "predict.py").read_text() == "class Predictor: ...\n"
    assert json.loads((first / ".cog" / "openapi_schema.json").read_text()) == OPENAPI
    assert source.fetches == [digest]
    assert not list(first.parent.glob("*.part"))


def test_materialize_refuses_bytes_that_do_not_match_the_digest_and_keeps_nothing(tmp_path):
    digest, data = a_bundle(tmp_path)
    source = FakeBundles({digest: data + b"tampered"})
    node = NodeResources(cache_dir=tmp_path / "cache", bundles=source)
    with pytest.raises(RuntimeError, match=f"has digest {hashlib.sha256(data + b'tampered').hexdigest()}"):
        materialize_bundle(node, digest, OPENAPI)
    bundles = tmp_path / "cache" / "cog" / "bundles"
    assert sorted(p.name for p in bundles.iterdir()) == [f"{digest}.lock"]
    source.blobs[digest] = data
    assert (materialize_bundle(node, digest, OPENAPI) / "cog.yaml").is_file()
    assert source.fetches == [digest, digest]


# Memory and coglet's log


def test_the_process_tree_of_this_process_holds_its_child_and_its_rss_is_at_least_its_own():
    own = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid()
        assert child.pid in tree
        assert rss_bytes(tree) > rss_bytes([os.getpid()]) >= own // 2 > 0
    finally:
        child.communicate(b"")


def test_a_process_that_is_gone_has_no_tree_and_no_rss():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    assert gone.wait() == 0
    assert process_tree(gone.pid) == []
    assert rss_bytes([gone.pid]) == 0


def coglet_line(target: str, message: str, **fields: str) -> str:
    return json.dumps({"timestamp": "2025-01-01T00:00:00Z", "level": "INFO",
                       "fields": {"message": message, **fields}, "target": target})


def test_coglets_output_is_sorted_into_setup_lines_prediction_lines_and_a_tail():
    reader, got = OutputReader(), []
    for line in [coglet_line("coglet::user", "loading weights"),
                 coglet_line("coglet::server", "listening on 127.0.0.1:5000"),
                 coglet_line("coglet::setup", "setup done"),
                 coglet_line("coglet::setup", "<string>:1: DeprecationWarning: old shim"),
                 coglet_line("coglet::prediction", "early", prediction_id="p1", source="Stdout"),
                 "plain stderr text"]:
        reader.take(line)
    assert reader.setup_lines == ["loading weights", "setup done"]
    assert {"listening on 127.0.0.1:5000", "plain stderr text"} <= set(reader.tail)
    reader.watch("p1", got.append)  # lines printed before anyone watched are handed over first
    reader.take(coglet_line("coglet::prediction", "late", prediction_id="p1", source="Stderr"))
    reader.take(coglet_line("coglet::prediction", "Starting prediction", prediction_id="p1"))  # coglet's own
    reader.take(coglet_line("coglet::prediction", "Prediction failed", prediction_id="p1"))  # it ended: None
    reader.unwatch("p1")
    reader.take(coglet_line("coglet::prediction", "after the end", prediction_id="p1", source="Stdout"))
    assert got == ["early", "late", None]


# Package environments


def wheel(path: Path, name: str = "wfdemo", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel: one module, ``{name}.VALUE = 42``."""
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = "".join(
        f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}\n"
        for n, d in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(f"{info}/RECORD", record)
    return path


@pytest.fixture
def offline_pip(monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)


def test_no_packages_need_no_environment(tmp_path):
    assert ensure_environment(CogConfig(predict="predict.py:Predictor"), tmp_path / "envs", tmp_path) is None
    assert not (tmp_path / "envs").exists()


def test_a_failed_install_says_pips_output_leaves_no_env_and_is_tried_again(tmp_path, offline_pip):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = CogConfig(predict="predict.py:Predictor", python_packages=("./wfdemo-0.1-py3-none-any.whl",))
    envs = tmp_path / "envs"
    with pytest.raises(InstallFailed) as caught:
        ensure_environment(config, envs, bundle)
    assert "wfdemo-0.1-py3-none-any.whl" in str(caught.value)
    assert "No such file or directory" in str(caught.value)  # pip's own output, not only ours
    assert not (envs / config.requirements_digest).exists()
    wheel(bundle / "wfdemo-0.1-py3-none-any.whl")  # the wheel is there now: the next load installs it
    target = ensure_environment(config, envs, bundle)
    assert target == envs / config.requirements_digest
    assert (target / DONE_MARKER).is_file()
    assert (target / "wfdemo" / "__init__.py").read_text() == "VALUE = 42\n"


def test_an_installed_environment_is_reused_without_pip(tmp_path, offline_pip):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = CogConfig(predict="predict.py:Predictor", python_packages=("./wfdemo-0.1-py3-none-any.whl",))
    wheel(bundle / "wfdemo-0.1-py3-none-any.whl")
    first = ensure_environment(config, tmp_path / "envs", bundle)
    (bundle / "wfdemo-0.1-py3-none-any.whl").unlink()  # pip would fail now; a reuse does not run it
    assert ensure_environment(config, tmp_path / "envs", bundle) == first


def test_coglets_line_that_a_prediction_ended_reaches_its_watcher_as_none_after_its_lines():
    reader, got = OutputReader(), []
    reader.watch("p1", got.append)
    reader.take(coglet_line("coglet::prediction", "Starting prediction", prediction_id="p1"))
    reader.take(coglet_line("coglet::prediction", "about to divide", prediction_id="p1", source="Stdout"))
    reader.take(coglet_line("coglet::prediction", "Prediction failed", prediction_id="p1",
                            error="ValueError: x must not be zero"))
    assert got == ["about to divide", None]


def test_the_end_marks_the_stream_ended_and_adds_no_event():
    stream = _Stream(ITERATOR, [])
    assert not stream.ended and stream.take("end", None) == [] and stream.ended
