"""The documentation site (mkdocs.yml over README.md and docs/) builds with ``mkdocs build --strict``, so a broken
link, a missing anchor or a docstring the API page cannot render fails the test command; what the pages promise is
checked against the code where it can be: every tidegate command line of the migration guide parses, every flag it
names exists, the Docker recipe installs the wheel it builds, the Config docstring names every setting."""

from __future__ import annotations

import html
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tidegate.cli import build_parser
from tidegate.config import GROUPS, Config

from .ops_helpers import ROOT

BUILD_TIMEOUT = 120.0
MIGRATION = ROOT / "docs" / "migration.md"
PEERS = ("uvicorn", "gunicorn", "hypercorn", "daphne", "granian")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's notice about MkDocs 2.0, printed on every build
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    return out


def text_of(page: Path) -> str:
    """A built page's article as plain text."""
    content = page.read_text("utf-8")
    article = content[content.index("<article"):content.index("</article>")]
    return html.unescape(re.sub(r"<[^>]+>", "", article))


def test_the_site_builds_strictly_and_fetches_nothing(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert {page.relative_to(site).as_posix() for page in pages} >= {
        "index.html", "migration/index.html", "api/index.html", "deployment/index.html", "scaling/index.html",
        "architecture/index.html", "benchmarks/index.html"}
    for page in pages:
        assert "fonts.googleapis.com" not in page.read_text("utf-8"), page


def test_the_home_page_is_the_readme_with_its_links_working_on_the_site(site: Path) -> None:
    index = (site / "index.html").read_text("utf-8")
    readme = (ROOT / "README.md").read_text("utf-8")
    headings = [heading for heading in re.findall(r"^##+ (.+)$", readme, re.MULTILINE) if not set("`[*") & set(heading)]
    assert len(headings) > 10
    for heading in headings:
        assert f">{html.escape(heading, quote=False)}<" in index, heading
    # a table's escaped pipes in code, shown as pipes (as GitHub shows them)
    assert "\\|" in readme and re.search(r"<code>[^<]*\\\|", index) is None
    targets = set(re.findall(r"\]\(([^)#\s:]+)[)#]", readme))
    assert any(target.startswith("docs/") for target in targets) and any("/" not in target for target in targets)
    for target in targets:
        if target.startswith("docs/"):  # a page of the site
            assert f'href="{target.removeprefix("docs/").removesuffix(".md")}/"' in index, target
        else:  # another file of the repository, on GitHub
            kind = "tree" if (ROOT / target).is_dir() else "blob"
            assert f'href="https://github.com/tidegate/tidegate/{kind}/main/{target}"' in index, target


def test_the_migration_guide_covers_every_peer(site: Path) -> None:
    text = text_of(site / "migration" / "index.html")
    for peer in PEERS:
        assert f"From {peer}" in text
    assert "tidegate.workers.Worker" in text  # the way to keep gunicorn's arbiter
    assert "Proxy headers are off" in text


def test_the_api_page_is_rendered_from_the_docstrings(site: Path) -> None:
    page = (site / "api" / "index.html").read_text("utf-8")
    for name in ("tidegate.run", "tidegate.serve", "tidegate.Config", "tidegate.Config.from_flat",
                 "tidegate.ConfigError"):
        assert f'id="{name}"' in page, name
    run = page[page.index('id="tidegate.run"'):page.index('id="tidegate.serve"')]
    signature = run[run.index('class="doc-signature'):]
    signature = html.unescape(re.sub(r"<[^>]+>", "", signature[signature.index(">") + 1:signature.index("</div>")]))
    signature = re.sub(r"\s+", " ", signature).strip()
    assert signature.startswith("run(") and signature.endswith("-> None"), signature
    for parameter in ("app: Any = None", "*", "config: Config | None = None", "**settings: Any"):
        assert parameter in signature, signature
    assert "SystemExit" in run and "exit code" in re.sub(r"\s+", " ", run)  # the docstring's Raises section


def tidegate_command_lines() -> list[str]:
    """The ``tidegate ...`` lines of the migration guide's shell examples."""
    blocks = re.findall(r"```sh\n(.*?)```", MIGRATION.read_text("utf-8"), re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith("tidegate ")]


@pytest.mark.parametrize("line", tidegate_command_lines())
def test_each_tidegate_command_line_of_the_migration_guide_is_accepted(line: str, tmp_path: Path) -> None:
    args = [arg for arg in shlex.split(line)[1:] if arg != "--print-config"]
    env = {key: value for key, value in os.environ.items()
           if (not key.startswith("TIDEGATE_") or key == "TIDEGATE_NO_EXTENSIONS")
           and key not in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS")}
    result = subprocess.run([sys.executable, "-m", "tidegate", "--print-config", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert 'app = "myproject.asgi:application"' in result.stdout


def flags(text: str) -> list[str]:
    return re.findall(r"(?<![\w-])(--?[a-z][a-z0-9_-]*)", text)


def test_the_migration_guide_names_only_flags_tidegate_has() -> None:
    ours = {option for action in build_parser()._actions for option in action.option_strings}
    text = MIGRATION.read_text("utf-8")
    named: list[str] = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) < 2 or cells[1] == "tidegate" or set(cells[0]) <= {"-"}:
            continue
        named += flags(cells[1])
        if cells[1].startswith("the same"):  # the peer's own flags, then
            named += flags(cells[0])
    same = text[text.index("These are the same in both"):text.index("Where they differ")]
    named += flags(same)
    assert len(named) > 100
    assert sorted(set(named) - ours) == []


def test_the_docker_recipe_builds_the_wheel_and_installs_it() -> None:
    deployment = (ROOT / "docs" / "deployment.md").read_text("utf-8")
    section = deployment[deployment.index("## Docker"):deployment.index("## Kubernetes")]
    recipe, = re.findall(r"```dockerfile\n(.*?)```", section, re.DOTALL)
    stages = list(re.finditer(r"^FROM .+$", recipe, re.MULTILINE))
    assert len(stages) == 2 and stages[0].group().endswith(" AS build"), recipe
    build, runtime = recipe[:stages[1].start()], recipe[stages[1].start():]
    assert "python -m build --wheel" in build
    installs = re.findall(r"pip install [^\n&]*", runtime)
    assert any(re.search(r"tidegate-\*\.whl\)?(\[[a-z,]+\])?\"?", command) for command in installs), installs
    assert "COPY --from=build" in runtime
    for command in re.findall(r"pip install [^\n&]*", recipe):
        packages = [word for word in command.split()[2:] if not word.startswith("-")]
        assert not any(re.fullmatch(r"[\"']?tidegate(\[[^\]]*\])?([=<>~!].*)?[\"']?", word) for word in packages), (
            f"installs tidegate from an index: {command}")


def test_the_config_docstring_names_every_setting() -> None:
    doc = inspect.cleandoc(Config.__doc__ or "")  # as 3.13 compiles it: the indentation common to its lines gone
    attributes = doc[doc.index("Attributes:"):]
    entries = dict(re.findall(r"^ {4}(\w+): (.*?)(?=^ {4}\w+: |\Z)", attributes, re.MULTILINE | re.DOTALL))
    assert sorted(entries) == sorted(name for name, _ in GROUPS)
    for name, kind in GROUPS:
        for field in kind.__dataclass_fields__:
            assert f"``{field}``" in entries[name], f"Config.{name}.{field} is missing from Config's docstring"


def kubernetes_manifest() -> dict[str, object]:
    import yaml

    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text[text.index("## Kubernetes"):]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match, "the Kubernetes section shows a manifest"
    manifest: dict[str, object] = yaml.safe_load(match.group(1))
    return manifest


def test_the_kubernetes_manifest_is_a_valid_deployment() -> None:
    # checked against the API schema (no cluster is run): a misspelt field or a wrong type fails here
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    manifest = kubernetes_manifest()
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def test_the_kubernetes_manifest_sets_only_settings_tidegate_has() -> None:
    from tidegate.sources import resolve

    manifest = kubernetes_manifest()
    [container] = manifest_containers(manifest)
    env = container["env"]
    assert isinstance(env, list)
    environ = {item["name"]: item["value"] for item in env}
    resolved = resolve({"app": "myapp.asgi:application"}, environ=environ)
    assert not [note for note in resolved.notes if "TIDEGATE_" in note], resolved.notes  # no unknown variable
    config = resolved.config
    assert config.health.health_path == "/healthz" and config.health.shutdown_delay == 10
    grace = manifest_pod(manifest)["terminationGracePeriodSeconds"]
    assert isinstance(grace, int) and grace > config.health.shutdown_delay + config.timeouts.graceful_shutdown


def manifest_pod(manifest: dict[str, object]) -> dict[str, object]:
    spec = manifest["spec"]
    assert isinstance(spec, dict)
    pod: dict[str, object] = spec["template"]["spec"]
    return pod


def manifest_containers(manifest: dict[str, object]) -> list[dict[str, object]]:
    containers = manifest_pod(manifest)["containers"]
    assert isinstance(containers, list)
    return containers


def test_every_flag_is_in_the_readme() -> None:
    # the README is the user's reference: a flag --help shows and the README does not is a gap
    readme = (ROOT / "README.md").read_text()
    flags_shown = {option for action in build_parser()._actions for option in action.option_strings
                   if option.startswith("--") and not option.startswith("--no-")}
    assert sorted(flag for flag in flags_shown if flag not in readme) == []
