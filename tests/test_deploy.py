"""The deploy/ recipes, checked as far as a machine without Docker or Kubernetes allows.

- every YAML file parses;
- the image is the pinned Dask release the tests run with;
- every ``dask scheduler`` / ``dask worker`` command line in the recipes is
  accepted by the installed ``dask`` command (parsed by its own option
  parser, not run), and every ``dask-em`` command line by ``dask-em``'s;
- the Kubernetes manifests validate against the CRD schemas shipped in the
  ``dask-kubernetes`` package (skipped without it and ``jsonschema``);
- the dask-jobqueue script renders a Slurm job script with worker lifetimes
  shorter than the wall time (skipped without ``dask-jobqueue``).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import dask
import distributed
import pytest
import yaml

from dask_em.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "kubernetes"
HPC = DEPLOY / "hpc"
IMAGE = "dask-em:0.1.0"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _check_dask_command(argv: list[str]) -> str:
    """Parse a ``dask scheduler|worker ...`` command line with the installed CLI; return which."""
    from distributed.cli import dask_scheduler, dask_worker

    assert argv[0] == "dask", f"use the `dask` entry point, not {argv[0]!r}: {argv}"
    commands = {"scheduler": dask_scheduler.main, "worker": dask_worker.main}
    assert argv[1] in commands, argv
    # Parses and type-checks every option without running anything.
    commands[argv[1]].make_context(f"dask {argv[1]}", list(argv[2:]))
    return argv[1]


def _check_dask_em_command(argv: list[str]):
    """Parse a ``dask-em ...`` command line with dask-em's own parser."""
    assert argv[0] == "dask-em", argv
    return build_parser().parse_args(argv[1:])


def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        assert isinstance(_yaml(path), dict), path


def test_image_is_the_pinned_dask_release_the_tests_use():
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"^FROM ghcr\.io/dask/dask:(\S+)-py(\d+\.\d+)\s*$", text, re.MULTILINE)
    assert match, "the Dockerfile must build FROM a pinned ghcr.io/dask/dask:<release>-py<X.Y> tag"
    # Client, scheduler and workers must run the same release.
    assert match.group(1) == dask.__version__ == distributed.__version__
    assert "pip install" in text and "/opt/dask-em" in text
    for name in re.findall(r"^COPY (.+) /opt/dask-em", text, re.MULTILINE):
        for item in name.split():
            assert (DEPLOY.parent / item).exists(), item


def test_compose_runs_scheduler_two_workers_and_the_fit():
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {s["image"] for s in services.values()} == {IMAGE}
    build = services["scheduler"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    kinds = {name: _check_dask_command(s["command"]) for name, s in services.items() if name != "fit"}
    assert sorted(kinds.values()) == ["scheduler", "worker", "worker"]
    scheduler_port = services["scheduler"]["command"][services["scheduler"]["command"].index("--port") + 1]
    for name, kind in kinds.items():
        if kind == "worker":
            assert services[name]["command"][2] == f"tcp://scheduler:{scheduler_port}"
            assert services[name]["command"][services[name]["command"].index("--nthreads") + 1] == "1"
    # The dashboard is published on the loopback interface only.
    assert all(p.startswith("127.0.0.1:") for p in services["scheduler"].get("ports", []))
    fit = _check_dask_em_command(services["fit"]["command"])
    assert (fit.command, fit.model) == ("fit", "gmm")
    assert fit.scheduler == f"tcp://scheduler:{scheduler_port}"
    assert fit.checkpoint and fit.output and fit.n_components


def test_compose_fit_is_the_command_line_the_real_cluster_test_runs():
    from test_real_cluster import GMM_CLI

    compose_fit = _check_dask_em_command(_yaml(DEPLOY / "docker-compose.yml")["services"]["fit"]["command"])
    tested = build_parser().parse_args(
        ["fit", "gmm", "X.zarr", *GMM_CLI, "--scheduler", "tcp://h:1", "--checkpoint", "c", "-o", "m"]
    )
    defaults = build_parser().parse_args(["fit", "gmm", "X.zarr"])
    used = {k for k, v in vars(compose_fit).items() if v != getattr(defaults, k)} - {"input"}
    exercised = {k for k, v in vars(tested).items() if v != getattr(defaults, k)}
    assert used <= exercised, f"options the tests never run: {sorted(used - exercised)}"


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["spec"]["containers"]


def test_kubernetes_manifests_use_the_image_and_commands():
    cluster = _yaml(K8S / "daskcluster.yaml")
    job = _yaml(K8S / "daskjob.yaml")
    pvc = _yaml(K8S / "checkpoint-pvc.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    assert (job["apiVersion"], job["kind"]) == ("kubernetes.dask.org/v1", "DaskJob")
    for spec in (cluster["spec"], job["spec"]["cluster"]["spec"]):
        for part, kind in (("scheduler", "scheduler"), ("worker", "worker")):
            for container in _containers(spec[part]):
                assert container["image"].endswith("/" + IMAGE)
                assert _check_dask_command(container["args"]) == kind
    (job_container,) = _containers(job["spec"]["job"])
    fit = _check_dask_em_command(job_container["args"])
    assert (fit.command, fit.model) == ("fit", "gmm") and fit.output
    # The checkpoint is on the persistent volume claimed by checkpoint-pvc.yaml.
    (mount,) = job_container["volumeMounts"]
    assert fit.checkpoint.startswith(mount["mountPath"] + "/")
    (volume,) = job["spec"]["job"]["spec"]["volumes"]
    assert volume["name"] == mount["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    # The job finds the scheduler through $DASK_SCHEDULER_ADDRESS, which the operator sets.
    assert fit.scheduler is None


def _crd_schemas() -> dict[str, dict]:
    pytest.importorskip("jsonschema")
    return _load_crd_schemas()


@functools.cache
def _load_crd_schemas() -> dict[str, dict]:
    spec = importlib.util.find_spec("dask_kubernetes")
    if spec is None or spec.origin is None:
        pytest.skip("dask-kubernetes (which ships the operator's CRDs) is not installed")
    crds = Path(spec.origin).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"
    schemas = {}
    # The CRDs are large: the C loader when PyYAML has it.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in (crds / "daskcluster.yaml", crds / "daskjob.yaml"):
        if not path.exists():
            continue
        crd = yaml.load(path.read_text(), Loader=loader)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    if not {"DaskCluster", "DaskJob"} <= set(schemas):
        pytest.skip(f"no DaskCluster/DaskJob CRD in {crds}")
    return schemas


def test_kubernetes_manifests_validate_against_the_operator_crds():
    import jsonschema

    schemas = _crd_schemas()
    for name in ("daskcluster.yaml", "daskjob.yaml"):
        manifest = _yaml(K8S / name)
        jsonschema.validate(manifest, schemas[manifest["kind"]])
    # The schema is really checked: a wrong type is refused.
    broken = _yaml(K8S / "daskcluster.yaml")
    broken["spec"]["worker"]["replicas"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schemas["DaskCluster"])


def _call_keywords(path: Path, function: str) -> dict:
    """The literal keyword arguments of the call to ``function`` in a script."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == function:
            return {k.arg: ast.literal_eval(k.value) for k in node.keywords if not isinstance(k.value, ast.Name)} | {
                k.arg: _module_constant(path, k.value.id) for k in node.keywords if isinstance(k.value, ast.Name)
            }
    raise AssertionError(f"no call to {function} in {path}")


def _module_constant(path: Path, name: str):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not a constant of {path}")


def test_kubecluster_snippet_makes_a_valid_cluster():
    import jsonschema

    schemas = _crd_schemas()
    path = K8S / "kubecluster.py"
    compile(path.read_text(), str(path), "exec")
    kwargs = _call_keywords(path, "KubeCluster")
    assert kwargs["image"].endswith("/" + IMAGE)
    _check_dask_command(kwargs["worker_command"] + ["tcp://scheduler:8786"])
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(**{k: kwargs[k] for k in ("name", "image", "n_workers", "resources", "env",
                                                      "worker_command")})
    jsonschema.validate(spec, schemas["DaskCluster"])


def _minutes(text: str) -> float:
    if ":" in text:
        h, m, s = (int(x) for x in text.split(":"))
        return 60 * h + m + s / 60
    value, unit = re.fullmatch(r"(\d+)([smh])", text).groups()
    return int(value) * {"s": 1 / 60, "m": 1, "h": 60}[unit]


def test_slurm_cluster_workers_retire_before_the_wall_time():
    pytest.importorskip("dask_jobqueue")
    spec = importlib.util.spec_from_file_location("slurm_cluster", HPC / "slurm_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert _minutes(module.LIFETIME) + _minutes(module.STAGGER) < _minutes(module.WALLTIME)
    cluster = module.make_cluster(scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert f"#SBATCH -t {module.WALLTIME}" in script
    worker_line = next(line for line in script.splitlines() if "dask_worker" in line or "dask worker" in line)
    argv = shlex.split(worker_line)
    worker_args = argv[argv.index("distributed.cli.dask_worker") + 1:] if "distributed.cli.dask_worker" in argv else argv[2:]
    _check_dask_command(["dask", "worker", *worker_args])
    assert f"--lifetime {module.LIFETIME}" in worker_line and f"--lifetime-stagger {module.STAGGER}" in worker_line


#: Values standing in for the shell variables of the batch script.
SAMPLE_VALUES = {"N_COMPONENTS": "8", "SLURM_NTASKS": "16", "ADDRESS": "tcp://10.0.0.1:8786"}


def _expand(line: str) -> str:
    line = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), line)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: SAMPLE_VALUES.get(m.group(1), f"/x/{m.group(1).lower()}"), line)


def _shell_commands(path: Path) -> list[list[str]]:
    """The command lines of a shell script (continuations joined, ``&`` dropped, variables expanded)."""
    text = _expand(re.sub(r"\\\n\s*", " ", path.read_text()))
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            commands.append(shlex.split(line.rstrip("&").strip(), comments=True))
    return commands


def test_sbatch_script_resumes_from_its_checkpoint():
    path = HPC / "fit.sbatch"
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    directives = re.findall(r"^#SBATCH (\S+)", text, re.MULTILINE)
    assert "--requeue" in directives and any(d.startswith("--time=") for d in directives)
    commands = _shell_commands(path)
    seen = set()
    for argv in commands:
        if argv[:1] == ["srun"]:
            argv = argv[next(i for i, a in enumerate(argv) if not a.startswith("-") and i > 0):]
        if argv[:1] == ["dask"]:
            seen.add(_check_dask_command(argv))
        if argv[:1] == ["dask-em"]:
            fit = _check_dask_em_command(argv)
            # Re-submitting the same command resumes: fit with a checkpoint resumes when it exists.
            assert fit.command == "fit" and fit.checkpoint and fit.scheduler and fit.output
            seen.add("dask-em")
    assert seen == {"scheduler", "worker", "dask-em"}


def test_readme_names_every_recipe_and_the_settings():
    text = (DEPLOY / "README.md").read_text()
    for name in ("docker-compose.yml", "daskcluster.yaml", "daskjob.yaml", "kubecluster.py",
                 "slurm_cluster.py", "fit.sbatch", "--scheduler", "DASK_EM_SCHEDULER", "--memory-limit",
                 "tls://", "--tls-ca-file", "DASK_EM_TLS_CA_FILE", "--lifetime", "dask-em resume", "helm install"):
        assert name in text, name
    assert "unpickled" in text
