"""nginx's semantics in Python: URI normalisation, $arg_ lookup, map matching order, the config
as nginx reads it (escapes, includes, fragments), the rewrite module and proxy_pass targets; and,
against real nginx, the evaluation of configs with escapes and rewrites."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from synfleet.errors import BadRequest, UsageError
from synfleet.nginx.binary.command import NginxProcess, world_readable_tempdir
from synfleet.nginx.config import (
    Directive,
    NginxModel,
    build_config,
    is_fragment,
    main_including,
    parse_config,
    walk,
    where,
)
from synfleet.nginx.lexer import quote, token, unescape
from synfleet.nginx.uri import arg, normalise_path, parse_request_target
from synfleet.nginx.variables import Map, MapEntry, Variables, interpolate
from synfleet.system import free_port


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


# The config as nginx reads it: escapes, includes, fragments.

CASES = Path(__file__).parent / "configs" / "nginx_semantics"


@pytest.mark.parametrize(
    ("written", "value"),
    [
        (r"^(\\/_matrix|\\/_synapse)", r"^(\/_matrix|\/_synapse)"),
        (r"say \"hi\"", 'say "hi"'),
        (r"it\'s", "it's"),
        (r"a\tb\rc\nd", "a\tb\rc\nd"),
        (r"\\n", r"\n"),  # one pass: an escaped backslash does not escape what follows
        (r"^/a\.b\d+$", r"^/a\.b\d+$"),  # other escapes reach PCRE as written
        (r"\\\"", '\\"'),
    ],
)
def test_unescape_like_nginx(written: str, value: str) -> None:
    assert unescape(written) == value


@pytest.mark.parametrize("value", ['say "hi"', "a\\", "\\n", "\\\\", "it's", "tab\there", r"^/a\.b\d+$", "", "x y;{}#"])
def test_written_tokens_read_back(value: str) -> None:
    assert unescape(quote(value)[1:-1]) == value
    written = token(value)
    assert unescape(written[1:-1] if written.startswith('"') else written) == value


def test_quote_keeps_regex_escapes_as_written() -> None:
    assert quote(r"^/_matrix/(?P<x>[^/]+)\.json$") == r'"^/_matrix/(?P<x>[^/]+)\.json$"'
    assert token("/_matrix/client") == "/_matrix/client"


def test_parse_config_gives_what_nginx_reads(tmp_path: Path) -> None:
    top = parse_config(CASES / "escapes" / "nginx.conf")
    [http] = [d for d in top if d["directive"] == "http"]
    [greeting] = [d for d in http["block"] if d["directive"] == "map"]
    assert [(e["directive"], e["args"]) for e in greeting["block"]] == [
        ("~^(?<name>[a-z]+)$", ['say "hi" to $name']),
        ("\\~tilde", ["it's a tilde"]),
        ("default", ["nobody\\nothing"]),
    ]
    locations = [d["args"] for d in walk(top) if d["directive"] == "location"]
    assert ["~*", r"^(\/_matrix|\/_synapse)"] in locations
    # What build_config writes, nginx (and so parse_config) reads back as the same values.
    rebuilt = tmp_path / "nginx.conf"
    rebuilt.write_text(build_config(top) + "\n")
    assert _shape(parse_config(rebuilt)) == _shape(top)


def _shape(block: list[Directive]) -> list[object]:
    return [(d["directive"], d["args"], _shape(d.get("block", []))) for d in block]


@pytest.mark.parametrize(
    ("url", "status", "answer", "uri"),
    [
        ("/_matrix/client/v3/sync", 200, "main", ""),
        ("/_SYNAPSE/admin/v1/users", 200, "main", ""),
        ("/matrix", 200, "other", ""),
        ("/greet?who=alice", 200, 'say "hi" to alice', ""),
        ("/greet?who=~tilde", 200, "it's a tilde", ""),
        ("/greet?who=B0b", 200, "nobody\\nothing", ""),
        ("/old/a/b", 404, "", "/new/a/b"),  # break: $uri changes, the location stays
        ("/moved/x?who=zed", 200, 'say "hi" to zed', ""),  # last: the new URI finds /greet
    ],
)
def test_escaped_config_evaluates_as_nginx_reads_it(url: str, status: int, answer: str, uri: str) -> None:
    outcome = NginxModel.load(CASES / "escapes" / "nginx.conf").evaluate("GET", url, {}, "127.0.0.1")
    assert (outcome.status, outcome.answer, outcome.uri) == (status, answer, uri)


def test_includes_glob_relative_to_the_main_file_and_name_their_own_file() -> None:
    top = parse_config(CASES / "conf_d" / "nginx.conf")
    [_, http] = top
    assert [(d["directive"], Path(d["file"]).name) for d in http["block"]] == [
        ("upstream", "10-upstreams.conf"),
        ("server", "20-server.conf"),
    ]
    sync = next(d for d in walk(top) if d["directive"] == "location")
    # The directive after the include is in 20-server.conf, whatever crossplane's combined form says.
    assert [(d["directive"], where(d)) for d in sync["block"]] == [
        ("proxy_set_header", "proxy.conf:1"),
        ("proxy_set_header", "proxy.conf:2"),
        ("proxy_pass", "20-server.conf:7"),
    ]
    model = NginxModel.load(CASES / "conf_d" / "nginx.conf")
    assert model.evaluate("GET", "/_matrix/client/v3/sync", {}, "127.0.0.1").worker == "synchrotron1"
    main = model.evaluate("GET", "/_matrix/client/v3/rooms/!r:x/messages", {}, "127.0.0.1")
    assert (main.upstream, main.worker) == ("unix:/run/synapse/main.sock", "unix:/run/synapse/main.sock")


def test_an_include_cycle_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "nginx.conf").write_text("events {}\nhttp {\n    include loop.conf;\n}\n")
    (tmp_path / "loop.conf").write_text("include loop.conf;\n")
    with pytest.raises(UsageError, match=r"loop\.conf: includes itself"):
        parse_config(tmp_path / "nginx.conf")


def test_a_fragment_alone_is_read_as_included_from_http() -> None:
    fragment = CASES / "docker_fragment" / "matrix.conf"
    assert is_fragment(fragment) and not is_fragment(CASES / "conf_d" / "nginx.conf")
    [http] = parse_config(fragment)
    assert http["directive"] == "http"
    assert [d["directive"] for d in http["block"]] == ["upstream", "upstream", "server"]
    model = NginxModel.load(fragment)
    routes = {
        url: (outcome.upstream, outcome.worker)
        for url in ("/_matrix/client/v3/sync", "/_matrix/media/v3/download/x/y", "/_synapse/admin/v1/users")
        for outcome in [model.evaluate("GET", url, {}, "127.0.0.1")]
    }
    assert routes == {
        "/_matrix/client/v3/sync": ("synchrotron", "localhost:18011"),
        "/_matrix/media/v3/download/x/y": ("media_repository", "worker.media_repository1"),
        "/_synapse/admin/v1/users": ("localhost:8080", "localhost:8080"),
    }


def _server_config(tmp_path: Path, server: str, http: str = "") -> NginxModel:
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"events {{}}\nhttp {{\n{http}\n    server {{\n{server}\n    }}\n}}\n")
    return NginxModel.load(conf)


def test_listen_forms_load(tmp_path: Path) -> None:
    model = _server_config(
        tmp_path,
        "listen 8080; listen [::]:8080; listen unix:/run/nginx/synapse.sock;\n"
        "location / { proxy_pass http://127.0.0.1:8008; }",
    )
    assert model.evaluate("GET", "/_matrix/client/versions", {}, "127.0.0.1").worker == "127.0.0.1:8008"


@pytest.mark.parametrize(
    ("target", "address"),
    [
        ("http://127.0.0.1:8008", "127.0.0.1:8008"),
        ("http://localhost:8080", "localhost:8080"),
        ("http://localhost:8080/", "localhost:8080"),
        ("https://[::1]:8448/_matrix/", "[::1]:8448"),
        ("http://unix:/run/main.sock", "unix:/run/main.sock"),
        ("http://unix:/run/main.sock:", "unix:/run/main.sock"),
        ("http://unix:/run/main.sock:/prefix/", "unix:/run/main.sock"),
        ("http://$backend", "synapse_main"),
    ],
)
def test_proxy_pass_without_upstream_block_names_the_address(tmp_path: Path, target: str, address: str) -> None:
    model = _server_config(
        tmp_path, f"location / {{ set $backend synapse_main; proxy_pass {target}; }}", http="map $uri $unused { }"
    )
    outcome = model.evaluate("GET", "/_matrix/client/versions", {}, "127.0.0.1")
    assert (outcome.status, outcome.upstream, outcome.worker, outcome.candidates) == (
        None,
        address,
        address,
        (address,),
    )


REWRITES = """
        location /a/ { rewrite ^/a/(.*)$ /b/$1 last; }
        location /b/ { proxy_pass http://b_worker:8008; }
        location /keep/ { rewrite ^/keep/(.*)$ /b/$1 break; proxy_pass http://keep_worker:8008; }
        location /stop/ { rewrite ^/stop/(.*)$ /b/$1; break; proxy_pass http://stop_worker:8008; }
        location /twice/ { rewrite ^/twice/(.*)$ /a/$1; rewrite ^/a/(.*)$ /b/$1; }
        location /args/ { rewrite ^/args/(.*)$ /b/?x=$1; }
        location /noargs/ { rewrite ^/noargs/(.*)$ /b/$1?; }
        location /go/ { rewrite ^/go/(.*)$ https://example.org/$1 permanent; }
        location /gone/ { return 410; }
        location = /loop { rewrite ^ /loop last; }
        location /internal/ { internal; proxy_pass http://internal_worker:8008; }
        location /via/ { rewrite ^/via/(.*)$ /internal/$1 last; }
"""


@pytest.mark.parametrize(
    ("url", "status", "where_to", "uri", "args"),
    [
        ("/a/x", None, "b_worker:8008", "/b/x", ""),
        ("/keep/x", None, "keep_worker:8008", "/b/x", ""),
        ("/stop/x", None, "stop_worker:8008", "/b/x", ""),  # break ends the rewrites and the search
        ("/twice/x?q=1", None, "b_worker:8008", "/b/x", "q=1"),  # no flag: go on, then search again
        ("/args/x?q=1", None, "b_worker:8008", "/b/", "x=x&q=1"),
        ("/noargs/x?q=1", None, "b_worker:8008", "/b/x", ""),
        ("/go/x?q=1", 301, "https://example.org/x?q=1", "", ""),
        ("/gone/x", 410, "", "", ""),
        ("/loop", 500, "", "", ""),  # the 11th URI change
        ("/internal/x", 404, "", "", ""),  # only a rewrite gets in
        ("/via/x", None, "internal_worker:8008", "/internal/x", ""),
    ],
)
def test_rewrite_module_in_locations(
    tmp_path: Path, url: str, status: int | None, where_to: str, uri: str, args: str
) -> None:
    model = _server_config(tmp_path, REWRITES)
    outcome = model.evaluate("GET", url, {}, "127.0.0.1")
    assert outcome.status == status
    assert (outcome.answer if status else outcome.worker) == where_to
    assert (outcome.uri, outcome.args) == (uri, args)


def test_rewrite_last_searches_at_most_ten_times(tmp_path: Path) -> None:
    chain = "\n".join(f"location = /c{n} {{ rewrite ^ /c{n + 1} last; }}" for n in range(11))
    model = _server_config(tmp_path, chain + "\nlocation = /c11 { return 200 $uri; }")
    assert model.evaluate("GET", "/c1", {}, "127.0.0.1").answer == "/c11"  # 10 changes
    assert model.evaluate("GET", "/c0", {}, "127.0.0.1").status == 500  # 11


def test_server_rewrites_and_return_come_before_location_search(tmp_path: Path) -> None:
    model = _server_config(
        tmp_path,
        "rewrite ^/old/(.*)$ /_matrix/$1 last;\n"
        "location /_matrix/ { proxy_pass http://synapse:8008; }\nlocation / { return 404; }",
    )
    outcome = model.evaluate("GET", "/old/client/versions", {}, "127.0.0.1")
    assert (outcome.worker, outcome.uri) == ("synapse:8008", "/_matrix/client/versions")
    closed = _server_config(tmp_path, "return 301 https://example.org$request_uri;\nlocation / { return 200; }")
    outcome = closed.evaluate("GET", "/x?y=1", {}, "127.0.0.1")
    assert (outcome.status, outcome.answer, outcome.location) == (301, "https://example.org/x?y=1", None)


def test_auth_request_is_taken_to_pass(tmp_path: Path) -> None:
    model = _server_config(
        tmp_path,
        "location /_synapse/admin/ { auth_request /auth; proxy_pass http://synapse:8008; }\n"
        "location = /auth { internal; proxy_pass http://auth:9000; }",
    )
    outcome = model.evaluate("GET", "/_synapse/admin/v1/users", {}, "203.0.113.5")
    assert (outcome.status, outcome.worker) == (None, "synapse:8008")
    assert model.evaluate("GET", "/auth", {}, "203.0.113.5").status == 404


def test_map_key_with_leading_backslash_is_exact() -> None:
    m = Map("$arg_k", "$out", (MapEntry("\\~lit", "tilde"), MapEntry("~^l", "regex")), default="none")

    def run(value: str) -> str:
        return Variables("GET", "/", f"k={value}", {}, "127.0.0.1", (m,)).get("out")

    assert (run("~lit"), run("lit"), run("x")) == ("tilde", "regex", "none")


def test_captures_are_one_digit_and_replaced_by_the_next_match() -> None:
    variables = Variables("GET", "/", "", {}, "127.0.0.1", ())
    variables.capture({"0": "ab", "1": "a", "2": "b"})
    assert interpolate("$12-$2", variables.get) == "a2-b"
    variables.capture({"0": "c", "1": "c"})
    assert interpolate("$1$2", variables.get) == "c"


# Real nginx on the same configs: the evaluation must give its answers.


def _nginx_answers(conf: Path, urls: list[str]) -> list[tuple[int, str, str | None, str | None]]:
    """(status, body, Location, X-Uri) from real nginx running ``conf`` on a free loopback port."""
    with world_readable_tempdir("sfn-") as directory:
        port = free_port()
        (directory / "logs").mkdir()
        text = conf.read_text().replace("server {", f"server {{\n        listen 127.0.0.1:{port};", 1)
        (directory / "nginx.conf").write_text(text)
        nginx = NginxProcess(directory)
        nginx.start(port)
        answers = []
        try:
            for url in urls:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", url)
                response = connection.getresponse()
                body = response.read().decode()
                answers.append((response.status, body, response.getheader("Location"), response.getheader("X-Uri")))
                connection.close()
        finally:
            nginx.stop()
    return answers


def _agrees(model: NginxModel, url: str, answer: tuple[int, str, str | None, str | None]) -> bool:
    status, body, location, uri = answer
    outcome = model.evaluate("GET", url, {}, "127.0.0.1")
    if outcome.status != status or (uri is not None and uri != outcome.uri):
        return False
    if 300 <= status < 400:  # nginx makes a relative redirect absolute
        return location is not None and location.endswith(outcome.answer)
    return status != 200 or body == outcome.answer


ESCAPED_URLS = [
    "/_matrix/client/v3/sync",
    "/_SYNAPSE/admin/v1/users",
    "/_matrix",
    "/matrix",
    "/greet?who=alice",
    "/greet?who=~tilde",
    "/greet?who=B0b",
    "/old/a/b",
    "/moved/x?who=zed",
]


@pytest.mark.integration
@pytest.mark.parametrize("written", ["as written", "by build_config"])
def test_real_nginx_reads_escapes_as_evaluated(tmp_path: Path, written: str) -> None:
    """Real nginx runs the config as written, or as build_config writes it back (as the audit's live
    confirmation does); either way it answers as the evaluation of the config as written."""
    conf = CASES / "escapes" / "nginx.conf"
    model = NginxModel.load(conf)
    if written == "by build_config":
        conf = tmp_path / "nginx.conf"
        conf.write_text(build_config(parse_config(CASES / "escapes" / "nginx.conf")) + "\n")
    answers = _nginx_answers(conf, ESCAPED_URLS)
    disagreements = [
        (url, answer) for url, answer in zip(ESCAPED_URLS, answers, strict=True) if not _agrees(model, url, answer)
    ]
    assert not disagreements
    assert answers[0][:2] == (200, "main")  # the catch-all regex matches at all


@pytest.mark.integration
def test_real_nginx_rewrites_as_evaluated(tmp_path: Path) -> None:
    chain = "".join(f"        location = /c{n} {{ rewrite ^ /c{n + 1} last; }}\n" for n in range(11))
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "events {}\nhttp {\n    server {\n" + chain + "        location = /c11 { return 200 $uri?$args; }\n"
        "        location /twice/ { rewrite ^/twice/(.*)$ /a/$1; rewrite ^/a/(.*)$ /c11?x=$1; }\n"
        "        location /stop/ { rewrite ^/stop/(.*)$ /c11; break; add_header X-Uri $uri always; }\n"
        "        location /go/ { rewrite ^/go/(.*)$ /c11?to=$1 redirect; }\n"
        "        location /internal/ { internal; return 200 internal; }\n"
        "        location /via/ { rewrite ^/via/ /internal/ last; }\n"
        "        location / { return 404; }\n    }\n}\n"
    )
    urls = ["/c0", "/c1", "/c5", "/twice/x?y=1", "/stop/x", "/go/x?y=1", "/internal/", "/via/x"]
    model = NginxModel.load(conf)
    answers = _nginx_answers(conf, urls)
    assert [url for url, answer in zip(urls, answers, strict=True) if not _agrees(model, url, answer)] == []
    assert [status for status, *_ in answers] == [500, 200, 200, 200, 404, 302, 404, 200]


def test_a_fragment_runs_included_from_http(tmp_path: Path) -> None:
    (tmp_path / "matrix.conf").write_text((CASES / "docker_fragment" / "matrix.conf").read_text())
    (tmp_path / "main.conf").write_text(main_including("matrix.conf"))
    top = parse_config(tmp_path / "main.conf")
    assert [d["directive"] for d in top] == ["events", "http"]
    assert _shape(top[1]["block"]) == _shape(parse_config(tmp_path / "matrix.conf")[0]["block"])
