"""nginx's URI normalisation, $arg_ lookup and map matching order."""

from __future__ import annotations

import pytest

from synfleet.errors import BadRequest
from synfleet.nginx.uri import arg, normalise_path, parse_request_target
from synfleet.nginx.variables import Map, MapEntry, Variables


@pytest.mark.parametrize(
    ("raw", "uri"),
    [
        ("/a/b", "/a/b"),
        ("//a///b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../c", "/a/c"),
        ("/a/%2E%2E/c", "/c"),
        ("/a%2Fb", "/a/b"),
        ("/%21x%3Ay", "/!x:y"),
        ("/%25/%23/%3F", "/%/#/?"),
        ("/a.b/..c", "/a.b/..c"),
        ("/a/...", "/a/..."),
    ],
)
def test_normalise_path_like_nginx(raw: str, uri: str) -> None:
    assert normalise_path(raw) == uri


@pytest.mark.parametrize("raw", ["/..", "/a/../..", "/%zz", "/%2", "/a%00b"])
def test_invalid_paths_are_rejected(raw: str) -> None:
    with pytest.raises(BadRequest):
        normalise_path(raw)


def test_request_target_forms() -> None:
    assert parse_request_target("https://host:8448/a/b?x=1") == ("/a/b", "x=1")
    assert parse_request_target("/a?b?c") == ("/a", "b?c")
    for bad in ("a/b", "/a b", "/a#frag", "/caf\u00e9"):
        with pytest.raises(BadRequest):
            parse_request_target(bad)


def test_arg_is_first_exact_name_case_insensitive() -> None:
    assert arg("a=1&b=2", "b") == "2"
    assert arg("ab=1&b=2", "b") == "2"
    assert arg("B=3&b=2", "b") == "3"
    assert arg("b", "b") == ""
    assert arg("", "b") == ""
    assert arg("b=", "b") == ""


def test_map_exact_before_regex_then_regex_order() -> None:
    m = Map(
        "$uri",
        "$out",
        (MapEntry("~^/a", "first-regex"), MapEntry("/a/b", "exact"), MapEntry("~^/a/(?P<rest>.*)", "$rest")),
        default="none",
    )

    def run(uri: str) -> str:
        return Variables("GET", uri, "", {}, "127.0.0.1", (m,)).get("out")

    assert run("/a/b") == "exact"
    assert run("/a/c") == "first-regex"
    assert run("/z") == "none"
