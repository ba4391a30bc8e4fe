"""The cluster files in infra/.

They are rendered from the charrnn config, valid against the schemas, and run
`charrnn launch`.

Kubernetes objects are validated with `kubernetes-validate` (the Kubernetes
OpenAPI schemas, strict); the PyTorchJob custom resource has no schema there,
so its pod templates are validated as core PodTemplates. The Dockerfile is
parsed with `dockerfile-parse`, the compose file is validated against the
Compose Specification's JSON schema (tests/data/compose-spec.json, Apache-2.0,
from the compose-spec project), and the Kubernetes work-pool template is
accepted by a real Prefect server.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from charrnn.config import Config, dump_config, load_config
from charrnn.distributed.launch import LaunchSpec, torchrun_command

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S_VERSION = "1.30.0"


def _renderer():
    spec = importlib.util.spec_from_file_location("infra_render", INFRA / "render.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _objects(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pod_templates(obj: dict) -> list[dict]:
    if obj["kind"] == "PyTorchJob":
        return [replica["template"] for replica in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] in ("Job", "Deployment"):
        return [obj["spec"]["template"]]
    return []


def test_committed_manifests_are_a_fresh_render():
    assert (
        subprocess.run(
            [sys.executable, str(INFRA / "render.py"), "--check"], capture_output=True, text=True
        ).returncode
        == 0
    )


@pytest.mark.parametrize("manifest", sorted((INFRA / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_validates_against_the_kubernetes_schema(manifest):
    for obj in _objects(manifest):
        if obj["apiVersion"].startswith("kubeflow.org/"):
            assert obj["kind"] == "PyTorchJob" and set(obj["spec"]["pytorchReplicaSpecs"]) <= {
                "Master",
                "Worker",
            }
            for template in _pod_templates(obj):
                kubernetes_validate.validate(
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": "t"},
                        "template": template,
                    },
                    K8S_VERSION,
                    strict=True,
                )
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_validation_catches_a_broken_manifest():
    (job,) = [o for o in _objects(INFRA / "k8s" / "train-indexed-job.yaml") if o["kind"] == "Job"]
    broken = copy.deepcopy(job)
    broken["spec"]["parallelism"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = copy.deepcopy(job)
    # not a field: strict mode refuses it
    broken["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("manifest", "endpoint"),
    [
        ("train-indexed-job.yaml", "charrnn-train-0.charrnn-train:29400"),
        ("train-pytorchjob.yaml", "charrnn-train-master-0:29400"),
    ],
)
def test_pods_run_exactly_what_charrnn_launch_would(manifest, endpoint):
    render = _renderer()
    spec = render.ClusterSpec()
    train_args = ["--config", render.CONFIG_PATH, "--out-dir", f"/runs/{spec.job}", "--resume"]
    expected = torchrun_command(
        LaunchSpec(
            nproc_per_node=spec.gpus_per_node,
            nnodes=spec.nnodes,
            rdzv_endpoint=endpoint,
            rdzv_id=spec.job,
            max_restarts=spec.max_restarts,
        ),
        train_args,
    )
    for obj in _objects(INFRA / "k8s" / manifest):
        for template in _pod_templates(obj):
            (container,) = template["spec"]["containers"]
            command = container["command"]
            assert command[:2] == ["charrnn", "launch"]
            printed = subprocess.run(
                [sys.executable, "-m", "charrnn", "launch", "--print-command", *command[2:]],
                capture_output=True,
                text=True,
                check=True,
            )
            assert json.loads(printed.stdout) == expected
            assert container["resources"]["limits"]["nvidia.com/gpu"] == spec.gpus_per_node
            # /dev/shm
            assert any(
                v.get("emptyDir", {}).get("medium") == "Memory" for v in template["spec"]["volumes"]
            )


def test_the_job_config_is_the_local_config():
    (config_map,) = [o for o in _objects(INFRA / "k8s" / "shared.yaml") if o["kind"] == "ConfigMap"]
    text = config_map["data"]["config.yaml"]
    local = Config()
    local.train.out_dir = "/runs/charrnn-train"
    assert text == dump_config(local)
    path = Path(__file__).parent / "_cluster_config.yaml"
    try:
        path.write_text(text)
        assert load_config(path).to_dict() == local.to_dict()
    finally:
        path.unlink()


def test_dockerfile_parses_and_runs_as_a_non_root_user():
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(INFRA / "docker" / "Dockerfile"))
    instructions = [i for i in parser.structure if i["instruction"] not in ("COMMENT",)]
    known = {
        "FROM",
        "ENV",
        "RUN",
        "WORKDIR",
        "ARG",
        "COPY",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
        "LABEL",
    }
    assert instructions[0]["instruction"] == "FROM" and "cuda" in parser.baseimage
    assert {i["instruction"] for i in instructions} <= known
    users = [i["value"] for i in instructions if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0")
    for copy_ in (i for i in instructions if i["instruction"] == "COPY"):
        *sources, _ = copy_["value"].split()
        # build context: the repository root
        assert all((ROOT / s).exists() for s in sources), copy_["value"]
    assert "torch==2.13.0" in parser.content
    # the image runs every deployment of prefect.yaml: training and the sweep with its trials
    (extras,) = re.findall(r'pip install "\.\[([a-z0-9,]+)\]"', parser.content)
    assert {"corpus", "prefect", "sweep"} <= set(extras.split(","))


def test_compose_file_validates_against_the_compose_spec():
    schema = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((INFRA / "docker" / "compose.yaml").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)
    broken = copy.deepcopy(compose)
    broken["services"]["gpu-worker"]["shm_size"] = ["8gb"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(schema).validate(broken)
    pools = {
        d["work_pool"]["name"]
        for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    }
    assert compose["services"]["gpu-worker"]["command"][4] in pools


@pytest.mark.prefect
def test_prefect_accepts_the_kubernetes_work_pool_template(prefect_server):
    from flows.local import run_cli

    run_cli(
        prefect_server,
        "work-pool",
        "create",
        "charrnn-k8s-test",
        "--type",
        "kubernetes",
        "--overwrite",
        "--base-job-template",
        str(INFRA / "prefect" / "base-job-template-kubernetes.json"),
    )
    shown = run_cli(prefect_server, "work-pool", "inspect", "charrnn-k8s-test").stdout
    assert "nvidia.com/gpu" in shown and "dshm" in shown
