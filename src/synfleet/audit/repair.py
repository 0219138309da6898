"""Run `nginx -t` on an existing config and repair what it can, one error at a time.

The config is copied into a temp prefix, keeping file names and line numbers, with log and pid
paths moved there. Each error nginx reports is put in plain words; errors with an obvious repair
(a stray line, an undefined variable, a directive this nginx lacks) are repaired in the copy so
the analysis can go on, and `nginx -t` runs again.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from synfleet.audit.source import MAIN_FILE, ConfigSource
from synfleet.errors import UsageError
from synfleet.nginx.binary.command import test_config, version_text
from synfleet.nginx.config import Location, is_fragment, main_including

REPAIR_FILE = "synfleet-repair.conf"
#: The main file written around a fragment given alone.
FRAGMENT_MAIN = "synfleet-main.conf"
MAX_REPAIRS = 20
_ERROR = re.compile(r"\[(?:emerg|alert|crit|error)\] (?P<message>.*?)(?: in (?P<file>/\S+?):(?P<line>\d+))?$")
_LOG_PATH = re.compile(r"^(\s*(?:access_log|error_log)\s+)(/\S+?)(;|\s)")
#: Directories nginx makes for bodies that do not fit in memory: the config's machine's, not this one's.
_TEMP_PATH = re.compile(r"^(\s*(?:client_body|proxy|fastcgi|uwsgi|scgi)_temp_path\s+)(/\S+?)(;|\s)")


@dataclass(frozen=True)
class NginxProblem:
    """One error from `nginx -t`, where it is, what it means, and whether the copy was repaired."""

    file: str
    line: int
    message: str
    plain: str
    repaired: bool


@dataclass(frozen=True)
class TestedConfig:
    directory: Path  # the working copy (repaired where possible)
    conf: Path
    problems: list[NginxProblem]
    passes: bool  # `nginx -t` accepts the (repaired) copy


def _uncopyable(directory: str, names: list[str]) -> set[str]:
    """Entries a copy must leave out: devices, FIFOs, sockets, dangling links and what cannot be read
    (a private key, say). A config file among them was already refused by :class:`ConfigSource`."""
    left_out = set()
    for name in names:
        path = os.path.join(directory, name)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            left_out.add(name)
            continue
        readable = os.access(path, os.R_OK | (os.X_OK if stat.S_ISDIR(mode) else 0))
        if not readable or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            left_out.add(name)
    return left_out


def copy_config(source: ConfigSource, work: Path) -> Path:
    """Copy a config (a directory with nginx.conf, or one file) into ``work``; the main file's path."""
    try:
        if source.is_directory:
            shutil.copytree(source.given, work, dirs_exist_ok=True, symlinks=False, ignore=_uncopyable)
            conf = work / MAIN_FILE
        else:
            work.mkdir(parents=True, exist_ok=True)
            conf = work / source.main.name
            shutil.copy(source.main, conf)
            if is_fragment(conf):  # server and upstream blocks meant for http {}: test them there
                conf = work / FRAGMENT_MAIN
                conf.write_text(main_including(source.main.name))
    except shutil.Error as error:  # a file that changed or vanished while being copied
        name, _, reason = error.args[0][0]
        raise UsageError(f"{name}: cannot be copied: {reason}") from None
    except OSError as error:
        raise UsageError(f"{error.filename or source.given}: cannot be copied: {error.strerror}") from None
    logs = work / "_logs"
    (logs / "temp").mkdir(parents=True, exist_ok=True)
    for path in work.rglob("*"):
        if path.is_file() and path.parent != logs:
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            lines = [
                _TEMP_PATH.sub(
                    lambda m: f"{m[1]}{logs / 'temp' / Path(m[2]).name}{m[3]}",
                    _LOG_PATH.sub(lambda m: f"{m[1]}{logs / Path(m[2]).name}{m[3]}", line),
                )
                for line in text.split("\n")
            ]
            # `pid` comes from the command line; comment it out in place (line numbers stay).
            lines = [re.sub(r"^(\s*)pid\s", r"\1#pid ", line) for line in lines]
            path.write_text("\n".join(lines))
    return conf


def _comment_out(path: Path, line: int, directive: str | None) -> int:
    """Comment out the line where ``directive`` starts (nginx reports the line where it ends);
    returns that line's number."""
    lines = path.read_text().split("\n")
    start = line
    if directive:
        start = next(
            (n for n in range(line, 0, -1) if re.match(rf"\s*{re.escape(directive)}(\s|;|\{{|$)", lines[n - 1])), line
        )
    lines[start - 1] = "#" + lines[start - 1]
    path.write_text("\n".join(lines))
    return start


def _define_variable(conf: Path, name: str) -> bool:
    """Define ``$name`` as empty in a file included at the top of the http block."""
    repair = conf.parent / REPAIR_FILE
    existing = repair.read_text() if repair.exists() else ""
    repair.write_text(existing + f'map "" ${name} {{ default ""; }}\n')
    if existing:
        return True
    text = conf.read_text()
    patched, count = re.subn(r"(^|\n)(\s*http\s*\{)", rf"\1\2 include {REPAIR_FILE};", text, count=1)
    conf.write_text(patched)
    return count == 1


def _first_use(work: Path, variable: str) -> tuple[Path, int] | None:
    """Where ``$variable`` is first used (nginx does not say for unknown variables)."""
    pattern = re.compile(rf"\${re.escape(variable)}\b")
    for path in sorted(work.rglob("*.conf")):
        try:
            lines = path.read_text().split("\n")
        except (UnicodeDecodeError, OSError):  # not a file nginx reads: ConfigSource checked those
            continue
        for number, text in enumerate(lines, 1):
            if pattern.search(text) and not text.lstrip().startswith("#") and REPAIR_FILE not in path.name:
                return path, number
    return None


def explain(message: str) -> tuple[str, str | None, str | None]:
    """(plain words, kind of repair, argument) for an nginx error message."""
    if found := re.match(r'unknown directive "(?P<name>[^"]+)"', message):
        name = found["name"]
        if name == "http2":
            return (
                f"`http2 on;` needs nginx 1.25.1 or newer, this is {version_text()}: write `listen ... ssl http2` "
                "instead",
                "comment",
                name,
            )
        return (
            f"nginx has no directive {name!r}: a typo, a comment that lost its '#', or a module this nginx lacks",
            "comment",
            name,
        )
    if found := re.match(r'unknown "(?P<name>[^"]+)" variable', message):
        return (
            f"${found['name']} is used but nothing defines it (no map, set or module provides it)",
            "define",
            found["name"],
        )
    if found := re.match(r'"(?P<name>[^"]+)" directive is duplicate', message):
        return f"{found['name']} is given twice where nginx allows it once", "comment", found["name"]
    if found := re.match(r'invalid number of arguments in "(?P<name>[^"]+)"', message):
        return f"{found['name']} has the wrong number of arguments (a missing ';'?)", None, None
    if "host not found in upstream" in message:
        return "proxy_pass or server names a host that does not resolve and no upstream block", None, None
    return message, None, None


def test_and_repair(source: ConfigSource, work: Path) -> TestedConfig:
    """`nginx -t` on a copy of ``source`` in ``work``, repairing and retrying while it can. nginx's
    messages name files as the user knows them, not in the copy."""
    conf = copy_config(source, work)
    problems: list[NginxProblem] = []
    for _ in range(MAX_REPAIRS):
        result = test_config(work, conf, work / "_logs" / "startup.log", work / "_logs" / "nginx.pid")
        if result.returncode == 0:
            return TestedConfig(work, conf, problems, True)
        found = next(filter(None, map(_ERROR.search, result.stderr.splitlines())), None)
        if found is None:
            output = source.in_user_terms(result.stderr.strip(), work)
            problems.append(NginxProblem(str(conf.name), 0, output, output, False))
            break
        file = Path(found["file"]) if found["file"] else conf
        line = int(found["line"] or 0)
        message = source.in_user_terms(found["message"], work)
        plain, repair, argument = explain(message)
        repaired = False
        if repair == "comment" and line:
            line = _comment_out(file, line, argument)
            repaired = True
        elif repair == "define" and argument:
            repaired = _define_variable(conf, argument)
            file, line = _first_use(work, argument) or (file, line)
        relative = str(file.relative_to(work)) if file.is_relative_to(work) else str(file)
        problems.append(NginxProblem(relative, line, message, plain, repaired))
        if not repaired:
            break
    return TestedConfig(work, conf, problems, False)


def add_proxy_pass(location: Location, tested: TestedConfig) -> bool:
    """A location that sets a proxy target in a variable but never passes to it gets
    ``proxy_pass $var;``, in the model and in the copy. True if it did."""
    target = next(
        (
            d
            for d in location.block
            if d["directive"] == "set" and len(d["args"]) == 2 and d["args"][1].startswith(("http://", "https://"))
        ),
        None,
    )
    if target is None:
        return False
    variable = target["args"][0]
    location.block.append({"directive": "proxy_pass", "args": [variable], "line": target["line"]})
    # Directives after an include inside a location carry the included file's name in
    # crossplane's combined output; a `set` in the location is in the location's own file.
    path = Path(location.file or tested.conf)
    lines = path.read_text().split("\n")
    if f"proxy_pass {variable};" not in lines[target["line"] - 1]:
        lines[target["line"] - 1] += f" proxy_pass {variable};"
        path.write_text("\n".join(lines))
    return True
