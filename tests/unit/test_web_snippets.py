"""The console's code snippets (``gateway.web.snippets``) carry the very input, in each language's own
syntax, and its live events (``gateway.web.live``) say what the page shows."""

from __future__ import annotations

import ast
import json
import re
import shlex

import orjson

from gateway.web.live import event_frame
from gateway.web.snippets import PLACEHOLDER, snippets
from warmfleet.domain import FileData, LogLine, OutputChunk, PredictionEvent, ProgressUpdate, Status

INPUT = {"prompt": "it's \"quoted\"", "steps": 2, "ok": True, "none": None, "stops": ["a", "b"],
         "units": [{"scale": 0.5}]}


def test_each_snippet_carries_the_same_input():
    tabs = snippets("http://127.0.0.1:8000", "127.0.0.1:50051", "acme/m", INPUT)
    assert list(tabs) == ["cURL", "Python (replicate)", "Python (warmfleet)", "Node.js", "grpcurl"]
    curl = shlex.split(tabs["cURL"].replace("\\\n", " "))
    assert curl[curl.index("-d") + 1] and json.loads(curl[curl.index("-d") + 1]) == {"input": INPUT}
    assert "http://127.0.0.1:8000/v1/models/acme/m/predictions" in curl
    for tab in ("Python (replicate)", "Python (warmfleet)"):
        code = tabs[tab]
        ast.parse(code)  # valid Python
        literal = re.search(r"input=(.*),\n\)", code, re.S).group(1)
        assert ast.literal_eval(literal) == INPUT, tab
    grpc = shlex.split(tabs["grpcurl"].replace("\\\n", " "))
    assert json.loads(grpc[grpc.index("-d") + 1])["input"]["json"]["fields"] == INPUT
    assert grpc[-2:] == ["127.0.0.1:50051", "warmfleet.v1.Predictions/CreatePrediction"]
    assert "$WARMFLEET_TOKEN" in tabs["cURL"] and "process.env.WARMFLEET_TOKEN" in tabs["Node.js"]


def test_a_file_input_is_a_placeholder_in_the_snippets():
    tabs = snippets("http://h:1", "h:2", "acme/up", {"image": FileData(b"\x89PNG", "image/png")})
    assert PLACEHOLDER in tabs["cURL"] and "PNG" not in tabs["cURL"]


def frame_data(event: PredictionEvent) -> tuple[str, dict]:
    text = event_frame(event).decode()
    name = re.search(r"^event: (\w+)$", text, re.M).group(1)
    assert re.search(rf"^id: {event.seq}$", text, re.M)
    return name, orjson.loads(re.search(r"^data: (.*)$", text, re.M).group(1))


def test_live_events_are_what_the_page_shows():
    assert frame_data(PredictionEvent("p", 1, Status.PROCESSING)) == ("status", {"status": "processing"})
    assert frame_data(PredictionEvent("p", 2, OutputChunk("tok"))) == ("output", {"text": "tok"})
    assert frame_data(PredictionEvent("p", 3, LogLine("a\nb"))) == ("logs", {"text": "a\nb"})  # one data line
    assert frame_data(PredictionEvent("p", 4, ProgressUpdate(2, 4, 1.5))) == (
        "progress", {"step": 2, "total": 4, "eta_s": 1.5})
    name, data = frame_data(PredictionEvent("p", 5, OutputChunk(file=FileData(b"\x89PNG", "image/png"))))
    assert name == "output" and data == {"image": "data:image/png;base64,iVBORw=="}
    assert event_frame(PredictionEvent("p", 6, OutputChunk(file=FileData(b"x", "application/zip")))) is None
