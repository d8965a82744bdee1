"""cog.yaml as ``runners.cog.config`` reads it: each rule refuses with ``InvalidInput`` naming the field
(``cog.yaml: build.python_version``), and ``check_runnable`` refuses what a node cannot run without
building a container image."""

from __future__ import annotations

import platform
import textwrap
from pathlib import Path

import pytest

from runners.cog.config import (
    MAX_CONCURRENCY,
    CogConfig,
    check_runnable,
    read_config,
    system_package_installed,
)
from warmfleet.errors import InvalidInput

PREDICT = 'predict: "predict.py:Predictor"\n'
HERE_MINOR = ".".join(platform.python_version().split(".")[:2])
NOT_INSTALLED = "warmfleet-no-such-package-7f3a"


def model_dir(root: Path, yaml_text: str | None, files: dict[str, str] | None = None) -> Path:
    """A model directory with ``predict.py``, the given cog.yaml (None: none) and other files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "predict.py").write_text("class Predictor: ...\n")
    if yaml_text is not None:
        (root / "cog.yaml").write_text(textwrap.dedent(yaml_text))
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def refusal(root: Path, check=read_config) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check(root)
    return caught.value


# The file itself


def test_a_directory_without_cog_yaml_is_refused_naming_the_file(tmp_path):
    assert refusal(model_dir(tmp_path, None)).field == "cog.yaml"


def test_invalid_yaml_is_refused_naming_the_file(tmp_path):
    error = refusal(model_dir(tmp_path, "build: [gpu: true\n"))
    assert error.field == "cog.yaml"
    assert "not valid YAML" in error.rule


def test_a_yaml_list_instead_of_a_mapping_is_refused(tmp_path):
    assert refusal(model_dir(tmp_path, "- build\n- predict\n")).field == "cog.yaml"


@pytest.mark.parametrize(("text", "field"), [
    (PREDICT + "buidl: {}\n", "cog.yaml: buidl"),
    (PREDICT + "build:\n  gpus: true\n", "cog.yaml: build.gpus"),
    (PREDICT + "build: [gpu]\n", "cog.yaml: build"),
])
def test_unknown_keys_and_a_non_mapping_build_are_refused_by_name(tmp_path, text, field):
    assert refusal(model_dir(tmp_path, text)).field == field


def test_a_minimal_cog_yaml_gives_the_defaults(tmp_path):
    config = read_config(model_dir(tmp_path, PREDICT))
    assert config == CogConfig(predict="predict.py:Predictor", python_version="", python_packages=(),
                               gpu=False, max_concurrency=1, environment={})


# predict


@pytest.mark.parametrize("value", [
    "", '"predict.py"', '"predict.py:Pre:dictor"', '"predict.txt:Predictor"', '"predict.py:1Predictor"', "5",
])
def test_a_missing_or_malformed_predict_is_refused(tmp_path, value):
    text = f"predict: {value}\n" if value else "build: {}\n"
    assert refusal(model_dir(tmp_path, text)).field == "cog.yaml: predict"


def test_predict_naming_a_file_that_is_not_there_is_refused(tmp_path):
    error = refusal(model_dir(tmp_path, 'predict: "missing.py:Predictor"\n'))
    assert error.field == "cog.yaml: predict"
    assert "missing.py" in error.rule


def test_predict_naming_a_file_outside_the_directory_is_refused(tmp_path):
    (tmp_path / "outside.py").write_text("class Predictor: ...\n")
    root = model_dir(tmp_path / "model", 'predict: "../outside.py:Predictor"\n')
    assert refusal(root).field == "cog.yaml: predict"


def test_predict_in_a_subfolder_is_accepted(tmp_path):
    root = model_dir(tmp_path, 'predict: "src/run.py:Model"\n', {"src/run.py": "class Model: ...\n"})
    assert read_config(root).predict == "src/run.py:Model"


# build.python_version


@pytest.mark.parametrize("value", ['"3"', '"3.x"', '"3.11.7.1"', '"python3.11"', '"3.11 "'])
def test_a_python_version_not_like_3_11_is_refused(tmp_path, value):
    error = refusal(model_dir(tmp_path, PREDICT + f"build:\n  python_version: {value}\n"))
    assert error.field == "cog.yaml: build.python_version"


def test_an_unquoted_python_version_is_read_as_written(tmp_path):
    root = model_dir(tmp_path, PREDICT + "build:\n  python_version: 3.10\n")
    assert read_config(root).python_version == "3.10"


@pytest.mark.parametrize("value", [HERE_MINOR, platform.python_version()])
def test_the_running_python_as_minor_or_patch_version_is_runnable(tmp_path, value):
    root = model_dir(tmp_path, PREDICT + f'build:\n  python_version: "{value}"\n')
    assert check_runnable(root).python_version == value


def other_python_versions() -> list[str]:
    major, minor, patch = (int(p) for p in platform.python_version().split("."))
    return [f"{major}.{minor + 1}", f"{major}.{minor}.{patch + 1}", f"{major}.{minor // 10}"]


@pytest.mark.parametrize("value", other_python_versions())
def test_another_python_than_the_nodes_is_refused_naming_the_one_to_set(tmp_path, value):
    root = model_dir(tmp_path, PREDICT + f'build:\n  python_version: "{value}"\n')
    assert read_config(root).python_version == value  # well-formed: only the node cannot run it
    error = refusal(root, check_runnable)
    assert error.field == "cog.yaml: build.python_version"
    assert f'"{HERE_MINOR}"' in error.rule


# build.python_packages and build.python_requirements


@pytest.mark.parametrize("value", ['"pillow==10.4.0"', "[pillow, 5]", '["pillow", " "]', "{pillow: 1}"])
def test_python_packages_that_are_not_a_list_of_requirements_are_refused(tmp_path, value):
    error = refusal(model_dir(tmp_path, PREDICT + f"build:\n  python_packages: {value}\n"))
    assert error.field == "cog.yaml: build.python_packages"


def test_python_requirements_are_added_after_python_packages_without_comments_or_blank_lines(tmp_path):
    root = model_dir(tmp_path, PREDICT + "build:\n  python_packages: [' pillow==10.4.0 ']\n"
                                         "  python_requirements: requirements.txt\n",
                     {"requirements.txt": "# pinned\nnumpy==2.0.0\n\n   # indented comment\n  requests \n"})
    assert read_config(root).python_packages == ("pillow==10.4.0", "numpy==2.0.0", "requests")


@pytest.mark.parametrize("name", ["missing.txt", "../requirements.txt"])
def test_python_requirements_naming_no_file_in_the_directory_are_refused(tmp_path, name):
    (tmp_path / "requirements.txt").write_text("numpy\n")
    root = model_dir(tmp_path / "model", PREDICT + f"build:\n  python_requirements: {name}\n")
    error = refusal(root)
    assert error.field == "cog.yaml: build.python_requirements"
    assert name in error.rule


# build.gpu and concurrency


@pytest.mark.parametrize("value", ['"true"', "1", '"yes"'])
def test_gpu_that_is_not_a_bool_is_refused(tmp_path, value):
    assert refusal(model_dir(tmp_path, PREDICT + f"build:\n  gpu: {value}\n")).field == "cog.yaml: build.gpu"


def test_gpu_true_is_read(tmp_path):
    assert read_config(model_dir(tmp_path, PREDICT + "build:\n  gpu: true\n")).gpu is True


@pytest.mark.parametrize("value", [1, 8, MAX_CONCURRENCY])
def test_concurrency_max_within_bounds_is_read(tmp_path, value):
    root = model_dir(tmp_path, PREDICT + f"concurrency:\n  max: {value}\n")
    assert read_config(root).max_concurrency == value


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_CONCURRENCY + 1), '"4"', "2.5", "true"])
def test_concurrency_max_out_of_bounds_or_not_an_integer_is_refused(tmp_path, value):
    error = refusal(model_dir(tmp_path, PREDICT + f"concurrency:\n  max: {value}\n"))
    assert error.field == "cog.yaml: concurrency.max"


@pytest.mark.parametrize("text", ["concurrency: 4\n", "concurrency:\n  max: 2\n  min: 1\n"])
def test_concurrency_that_is_not_a_mapping_of_max_is_refused(tmp_path, text):
    assert refusal(model_dir(tmp_path, PREDICT + text)).field == "cog.yaml: concurrency"


# environment


def test_environment_entries_are_split_at_the_first_equals_sign(tmp_path):
    root = model_dir(tmp_path, PREDICT + 'environment: ["A=1", "URL=http://x/?a=b", "EMPTY="]\n')
    assert read_config(root).environment == {"A": "1", "URL": "http://x/?a=b", "EMPTY": ""}


@pytest.mark.parametrize(("text", "field"), [
    ('environment: "A=1"\n', "cog.yaml: environment"),
    ('environment: ["A=1", "NOVALUE"]\n', "cog.yaml: environment[1]"),
    ('environment: ["1A=x"]\n', "cog.yaml: environment[0]"),
    ('environment: ["=x"]\n', "cog.yaml: environment[0]"),
])
def test_environment_that_is_not_a_list_of_name_value_is_refused_naming_the_entry(tmp_path, text, field):
    assert refusal(model_dir(tmp_path, PREDICT + text)).field == field


# Build steps a node cannot take


def test_build_run_is_refused_as_runnable_though_it_reads(tmp_path):
    root = model_dir(tmp_path, PREDICT + "build:\n  run: ['curl -o /x http://example.com']\n")
    assert read_config(root).predict == "predict.py:Predictor"
    assert refusal(root, check_runnable).field == "cog.yaml: build.run"


def test_system_packages_not_installed_are_refused_naming_the_missing_one(tmp_path):
    root = model_dir(tmp_path, PREDICT + f"build:\n  system_packages: [{NOT_INSTALLED}]\n")
    error = refusal(root, check_runnable)
    assert error.field == "cog.yaml: build.system_packages"
    assert NOT_INSTALLED in error.rule


@pytest.mark.skipif(not system_package_installed("dpkg"), reason="no dpkg database on this machine")
def test_system_packages_that_are_installed_pass_and_only_the_missing_one_is_named(tmp_path):
    assert check_runnable(model_dir(tmp_path / "ok", PREDICT + "build:\n  system_packages: [dpkg]\n")).predict
    root = model_dir(tmp_path / "bad", PREDICT + f"build:\n  system_packages: [dpkg, {NOT_INSTALLED}]\n")
    error = refusal(root, check_runnable)
    assert error.rule.startswith(f"{NOT_INSTALLED} not installed")


# The requirements digest


def test_the_requirements_digest_is_stable_and_changes_with_the_packages(tmp_path):
    first = read_config(model_dir(tmp_path / "a", PREDICT + "build:\n  python_packages: [pillow==10.4.0]\n"))
    again = read_config(model_dir(tmp_path / "b", PREDICT + "build:\n  python_packages: [pillow==10.4.0]\n"))
    other = read_config(model_dir(tmp_path / "c", PREDICT + "build:\n  python_packages: [pillow==10.3.0]\n"))
    assert first.requirements_digest == again.requirements_digest
    assert len(first.requirements_digest) == 24
    assert other.requirements_digest != first.requirements_digest


def test_no_packages_have_no_requirements_digest():
    assert CogConfig(predict="predict.py:Predictor").requirements_digest == ""
