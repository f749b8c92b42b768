"""Ollama's full name form `[host[:port]/][namespace/]model:tag` wherever loraship takes a tag:
compare and promote (the local server's `<model>:vN`), publish (a registry destination)."""

from __future__ import annotations

import pytest

from helpers import cli_run, error_line
from loraship import pipeline
from loraship.errors import ConfigError, LorashipError, VersionError
from loraship.serve import names


@pytest.mark.parametrize("tag", ["mining:v2", "library/mining:v2", "registry.ollama.ai/library/mining:v2",
                                 "REGISTRY.ollama.ai/Library/mining:v2"])
def test_a_version_tag_may_be_written_in_full(tag):
    assert pipeline.parse_tag(tag) == ("mining", "v2")


@pytest.mark.parametrize("tag, words", [
    ("mining", "must be MODEL:vN"),
    ("127.0.0.1:5000/team/mining", "must be MODEL:vN"),
    ("mining:latest", "version 'latest' is not valid"),
    ("Mining:v2", "model name 'Mining' is not valid"),  # a runs/ folder keeps the local rule
    ("min ing:v2", "is not valid"),
    ("a/b/c/d:v2", "is not valid"),
    ("team/mining:v2", "names a published copy (registry.ollama.ai/team)"),
    ("127.0.0.1:5000/team/mining:v2", "`loraship publish -m mining v2` ships it"),
])
def test_tags_that_do_not_name_a_local_version_are_one_line(tag, words):
    with pytest.raises(LorashipError) as e:
        pipeline.parse_tag(tag)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_compare_and_promote_take_the_full_form_on_the_command_line():
    out = cli_run("promote", "127.0.0.1:5000/team/tiny:v1", code=2)
    assert "names a published copy (127.0.0.1:5000/team)" in error_line(out)
    out = cli_run("compare", "registry.ollama.ai/library/tiny:v1", code=2)
    assert "model 'tiny' has no versions yet" in error_line(out)  # parsed, then looked up


@pytest.mark.parametrize("target, expected", [
    ("v3", (None, "v3")),
    ("mining:v3", (names.OllamaName("", "", "mining", "v3"), "v3")),
    ("gpu-box.lan:5000/team/mining:v3", (names.OllamaName("gpu-box.lan:5000", "team", "mining", "v3"), "v3")),
])
def test_publish_targets(target, expected):
    assert names.parse_publish_target(target) == expected


@pytest.mark.parametrize("target, error", [
    ("team/mining:v3", VersionError), ("latest", VersionError), ("mining:prod", VersionError),
    ("host:5000/team/Mining:v3", ConfigError),
])
def test_publish_targets_that_name_no_version_or_no_registry(target, error):
    with pytest.raises(error):
        names.parse_publish_target(target)


def test_registry_names_are_valid_for_ollama_and_for_the_registry():
    assert names.registry_name("127.0.0.1:5000", "team", "mining-bot", "v2") == "127.0.0.1:5000/team/mining-bot:v2"
    for namespace, model in (("Team", "bot"), ("team", "bot-"), ("team", "bot..x"), ("te--", "bot")):
        with pytest.raises(ConfigError, match="not a valid registry repository component"):
            names.registry_name("127.0.0.1:5000", namespace, model, "v2")


def test_shortest_display_leaves_out_defaults():
    assert names.split_ollama_name("mining:v2").shortest() == "mining:v2"
    assert names.split_ollama_name("team/mining:v2").shortest() == "team/mining:v2"
    assert names.split_ollama_name("h:1/team/mining:v2").shortest() == "h:1/team/mining:v2"
