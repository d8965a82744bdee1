"""The one error hierarchy and its one status table, walked row by row."""

from __future__ import annotations

import inspect

import grpc
import pytest

import warmfleet.errors as errors
from gateway.grpc.interceptors import error_status
from warmfleet.errors import (
    INTERNAL, STATUS_TABLE, AlreadyExists, FailedPrecondition, InvalidInput, LimitExceeded, NotFound,
    PermissionDenied, QueueFull, Unauthenticated, Unavailable, WarmfleetError, status_for,
)

# The public contract: what a client sees for each error, over gRPC and over REST.
EXPECTED = {
    InvalidInput: ("INVALID_ARGUMENT", 422),
    Unauthenticated: ("UNAUTHENTICATED", 401),
    PermissionDenied: ("PERMISSION_DENIED", 403),
    NotFound: ("NOT_FOUND", 404),
    AlreadyExists: ("ALREADY_EXISTS", 409),
    QueueFull: ("RESOURCE_EXHAUSTED", 429),
    LimitExceeded: ("RESOURCE_EXHAUSTED", 429),
    Unavailable: ("UNAVAILABLE", 503),
    FailedPrecondition: ("FAILED_PRECONDITION", 409),
    WarmfleetError: ("UNKNOWN", 500),
}


def _make(cls: type[WarmfleetError]) -> WarmfleetError:
    if issubclass(cls, InvalidInput):
        return cls("input.text", "must be a string")
    return cls("something went wrong: details for the client")


def test_every_class_of_the_hierarchy_has_a_row():
    declared = {obj for _, obj in inspect.getmembers(errors, inspect.isclass)
                if issubclass(obj, WarmfleetError) and obj.__module__ == errors.__name__}
    assert declared == set(STATUS_TABLE)
    assert set(STATUS_TABLE) == set(EXPECTED)


@pytest.mark.parametrize("cls", list(STATUS_TABLE), ids=lambda c: c.__name__)
def test_each_class_maps_to_its_row(cls):
    assert status_for(_make(cls)) == STATUS_TABLE[cls] == EXPECTED[cls]


@pytest.mark.parametrize("cls", list(STATUS_TABLE), ids=lambda c: c.__name__)
def test_a_subclass_defined_elsewhere_inherits_its_base_row(cls):
    sub = type(f"Special{cls.__name__}", (cls,), {})
    assert status_for(_make(sub)) == STATUS_TABLE[cls]


@pytest.mark.parametrize("cls", list(STATUS_TABLE), ids=lambda c: c.__name__)
def test_each_row_names_a_real_grpc_status_and_an_http_error(cls):
    err = _make(cls)
    code, message = error_status(err)
    assert isinstance(code, grpc.StatusCode)
    assert code.name == STATUS_TABLE[cls][0]
    assert message == str(err)  # a warmfleet error's message is meant for the client
    assert 400 <= STATUS_TABLE[cls][1] <= 599


@pytest.mark.parametrize("err", [RuntimeError("/secret/path leaked"), KeyError("token"), ValueError("x")],
                         ids=lambda e: type(e).__name__)
def test_an_error_outside_the_hierarchy_is_internal_with_a_generic_message(err):
    assert status_for(err) == INTERNAL == ("INTERNAL", 500)
    code, message = error_status(err)
    assert code is grpc.StatusCode.INTERNAL
    assert str(err) not in message and "secret" not in message


def test_a_class_that_mixes_in_a_builtin_error_still_uses_its_warmfleet_row():
    class MissingModel(LookupError, NotFound):
        pass

    assert status_for(MissingModel("acme/nope")) == EXPECTED[NotFound]


def test_invalid_input_names_the_field_and_the_rule():
    err = InvalidInput("input.delay_ms", "must be at least 0")
    assert (err.field, err.rule) == ("input.delay_ms", "must be at least 0")
    assert str(err) == "input.delay_ms: must be at least 0"


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_an_error_crosses_a_process_as_its_code_and_field_and_is_the_same_error_again(cls):
    original = _make(cls)
    code = errors.error_code(original)
    again = errors.error_from_code(code, str(original), getattr(original, "field", ""))
    assert code == cls.__name__ and type(again) is cls and str(again) == str(original)
    assert status_for(again) == EXPECTED[cls]


def test_an_error_outside_the_hierarchy_has_no_code_and_a_subclass_has_its_rows():
    class Refused(InvalidInput):
        pass

    assert errors.error_code(ValueError("x")) == ""
    assert errors.error_code(Refused("input.a", "no")) == "InvalidInput"
    assert type(errors.error_from_code("NoSuchCode", "text")) is WarmfleetError
