"""The worker image's Dockerfile, linted for what the pods rely on (no Docker engine is needed):
a pinned base, wheels built in a first stage, no build tools and a non-root numeric user in the
final one (the same uid the StatefulSet runs as), `ledgerflow worker` as the command, and a
.dockerignore that keeps the venv, the git history and the tests out of the build context."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache

import yaml

from streams.settings import Settings
from tests.support import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "cmake", "clang", "python3-dev", "libc6-dev")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


@cache
def parsed() -> tuple[dict[str, str], tuple[Stage, ...]]:
    """The global ARG defaults and the stages, FROM's ${ARG} resolved."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, tuple(stages)


def stages() -> tuple[Stage, ...]:
    return parsed()[1]


def test_multi_stage_on_a_pinned_base() -> None:
    build, *_, final = stages()
    assert len(stages()) >= 2
    assert build.name and final.base == build.base
    image, _, tag = final.base.partition(":")
    assert image == "python"
    # An exact release (3.11.14-slim-bookworm), or a digest: never a moving tag like 3.11-slim.
    assert re.match(r"^3\.11\.\d+-slim", tag) or "@sha256:" in final.base, final.base


def test_wheels_are_built_first_and_installed_offline() -> None:
    build, *_, final = stages()
    assert any(re.search(r"\bpip wheel\b.*--wheel-dir", run) for run in build.all("RUN"))
    installs = [run for run in final.all("RUN") if re.search(r"\bpip install\b", run)]
    assert installs and all("--no-index" in run and f"from={build.name}" in run for run in installs)


def test_no_build_tools_in_the_final_stage() -> None:
    *_, final = stages()
    for keyword, rest in final.instructions:
        words = set(shlex.split(rest.replace("&&", " ").replace(";", " "))) if keyword == "RUN" else set()
        assert not words & set(BUILD_TOOLS), f"{keyword} {rest}"
        assert not (keyword == "RUN" and re.search(r"\bpip wheel\b", rest))
    build, *_ = stages()
    assert any("build-essential" in run for run in build.all("RUN")), "the build stage has the compiler"


def test_runs_as_the_non_root_user_the_pods_expect() -> None:
    *_, final = stages()
    users = final.all("USER")
    assert users, "no USER in the final stage: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric uid lets the kubelet check runAsNonRoot"
    statefulset = yaml.safe_load((REPO / "k8s" / "base" / "statefulset.yaml").read_text())
    context = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid or uid))
    # Nothing runs as root after the switch.
    keywords = [kw for kw, _ in final.instructions]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


def test_entrypoint_is_ledgerflow_worker_on_the_web_port() -> None:
    *_, final = stages()
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["ledgerflow"]
    assert json.loads(final.all("CMD")[-1]) == ["worker", "-l", "info"]
    assert final.all("EXPOSE") == [str(Settings.model_fields["web_port"].default)]
    env = " ".join(final.all("ENV"))
    assert "LEDGERFLOW_WEB_BIND=0.0.0.0" in env and "PYTHONDONTWRITEBYTECODE=1" in env


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path, or one of its parents, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            verdict = not negated
    return verdict


def test_dockerignore_sends_only_the_package_sources() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    build, *_ = stages()
    copied = [src for rest in build.all("COPY") for src in rest.split()[:-1] if not src.startswith("--")]
    for source in copied:
        for path in REPO.glob(f"{source}/**/*.py") if (REPO / source).is_dir() else [REPO / source]:
            relative = str(path.relative_to(REPO))
            assert not ignored(relative, patterns), relative
    for kept_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "test-artifacts/x.log",
        "k8s/base",
    ):
        assert ignored(kept_out, patterns), kept_out
    assert ignored("streams/__pycache__/app.cpython-311.pyc", patterns)
