"""Render the cluster files in infra/ from a charrnn config.

Clusters and laptops then train the same thing.

    # rewrite infra/k8s and infra/prefect from the defaults:
    python infra/render.py
    python infra/render.py --config my.yaml --nnodes 4 --gpus-per-node 8
                           --image registry/charrnn:1.2
    # fail if the committed files differ from a fresh render:
    python infra/render.py --check

The training command in every manifest is ``charrnn launch`` with c10d
rendezvous (no node ranks): pod 0 of the job is the rendezvous endpoint, every
pod runs the same command, torchrun restarts the worker group on failure
(``--max-restarts``), and ``--resume`` continues from the newest checkpoint in
the shared runs volume.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from charrnn.config import dump_config, load_config

INFRA = Path(__file__).resolve().parent
RDZV_PORT = 29400
CONFIG_PATH = "/etc/charrnn/config.yaml"
RUNS_MOUNT = "/runs"


@dataclass(frozen=True)
class ClusterSpec:
    job: str = "charrnn-train"
    namespace: str = "charrnn"
    image: str = "ghcr.io/charrnn/charrnn:latest"
    nnodes: int = 2
    gpus_per_node: int = 1
    max_restarts: int = 3
    cpu: str = "8"
    memory: str = "32Gi"
    shm: str = "8Gi"  # /dev/shm for NCCL and DataLoader shared memory
    runs_pvc: str = "charrnn-runs"
    runs_storage: str = "200Gi"
    node_selector: tuple[tuple[str, str], ...] = (("nvidia.com/gpu.present", "true"),)
    work_pool: str = "charrnn-k8s"


def launch_args(spec: ClusterSpec, rdzv_host: str) -> list[str]:
    """``charrnn launch ...`` for every pod of the job (identical on all of them)."""
    return [
        "charrnn", "launch",
        "--nnodes", str(spec.nnodes),
        "--nproc-per-node", str(spec.gpus_per_node),
        "--rdzv-endpoint", f"{rdzv_host}:{RDZV_PORT}",
        "--rdzv-id", spec.job,
        "--max-restarts", str(spec.max_restarts),
        "--",
        "--config", CONFIG_PATH,
        "--out-dir", f"{RUNS_MOUNT}/{spec.job}",
        "--resume",
    ]  # fmt: skip


def _container(spec: ClusterSpec, command: list[str]) -> dict:
    gpu = {"nvidia.com/gpu": spec.gpus_per_node} if spec.gpus_per_node else {}
    return {
        "name": "trainer",
        "image": spec.image,
        "command": command,
        "ports": [{"name": "rdzv", "containerPort": RDZV_PORT}],
        "env": [
            # set WANDB_API_KEY from a Secret to go online
            {"name": "WANDB_MODE", "value": "offline"},
            {"name": "CHARRNN_CACHE", "value": f"{RUNS_MOUNT}/cache"},
            {"name": "NCCL_DEBUG", "value": "WARN"},
        ],
        "resources": {
            "requests": {"cpu": spec.cpu, "memory": spec.memory, **gpu},
            "limits": {"memory": spec.memory, **gpu},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": str(Path(CONFIG_PATH).parent)},
            {"name": "runs", "mountPath": RUNS_MOUNT},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }


def _pod_spec(spec: ClusterSpec, command: list[str], restart: str) -> dict:
    return {
        "restartPolicy": restart,
        # SIGTERM -> torchrun forwards it and waits 30 s for its workers, which checkpoint and
        # exit; 45 s lets that finish before the kubelet's SIGKILL (README: Stopping).
        "terminationGracePeriodSeconds": 45,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [_container(spec, command)],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{spec.job}-config"}},
            {"name": "runs", "persistentVolumeClaim": {"claimName": spec.runs_pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm}},
        ],
    }


def _meta(spec: ClusterSpec, name: str, **extra) -> dict:
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": {
            "app.kubernetes.io/name": "charrnn",
            "app.kubernetes.io/component": extra.pop("component", "training"),
        },
        **extra,
    }


def shared(spec: ClusterSpec, config_yaml: str) -> list[dict]:
    """The namespace, the charrnn config and the runs volume.

    The config is the same YAML `charrnn train --config` reads.
    """
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": spec.namespace}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(spec, f"{spec.job}-config"),
            "data": {"config.yaml": config_yaml},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(spec, spec.runs_pvc),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": spec.runs_storage}},
            },
        },
    ]


def indexed_job(spec: ClusterSpec) -> list[dict]:
    """Plain Kubernetes: a headless Service + an Indexed Job.

    Pod 0 (``JOB-0.JOB``) is the rendezvous endpoint.
    """
    selector = {"job-name": spec.job}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, spec.job),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "rdzv", "port": RDZV_PORT}],
            "publishNotReadyAddresses": True,
        },
    }
    pod = _pod_spec(spec, launch_args(spec, f"{spec.job}-0.{spec.job}"), "Never")
    pod["subdomain"] = spec.job  # pods get JOB-<index>.JOB DNS names through the headless Service
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(spec, spec.job),
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.nnodes,
            "parallelism": spec.nnodes,
            "backoffLimit": 0,  # restarts happen inside torchrun (--max-restarts), from checkpoints
            "template": {"metadata": {"labels": selector}, "spec": pod},
        },
    }
    return [service, job]


def pytorchjob(spec: ClusterSpec) -> list[dict]:
    """Kubeflow Training Operator: a PyTorchJob whose Master pod is the rendezvous endpoint."""
    command = launch_args(spec, f"{spec.job}-master-0")

    def replica(count: int) -> dict:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {"spec": _pod_spec(spec, command, "OnFailure")},
        }

    replicas = {"Master": replica(1)}
    if spec.nnodes > 1:
        replicas["Worker"] = replica(spec.nnodes - 1)
    return [
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": _meta(spec, spec.job),
            "spec": {"runPolicy": {"backoffLimit": 3}, "pytorchReplicaSpecs": replicas},
        }
    ]


def prefect_worker(spec: ClusterSpec) -> list[dict]:
    """A Prefect Kubernetes worker for the pool; it may create Jobs and read their pods and logs."""
    name = "prefect-worker"
    meta = _meta(spec, name, component="orchestration")
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": ["batch"],
                    "resources": ["jobs"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["pods", "pods/log", "events"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "serviceAccountName": name,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                        "containers": [
                            {
                                "name": "worker",
                                "image": spec.image,
                                "command": [
                                    "prefect",
                                    "worker",
                                    "start",
                                    "--pool",
                                    spec.work_pool,
                                    "--type",
                                    "kubernetes",
                                ],
                                "env": [
                                    {
                                        "name": "PREFECT_API_URL",
                                        "valueFrom": {
                                            "configMapKeyRef": {"name": "prefect", "key": "api-url"}
                                        },
                                    },
                                    {
                                        "name": "PREFECT_API_AUTH_STRING",
                                        "valueFrom": {
                                            "secretKeyRef": {
                                                "name": "prefect",
                                                "key": "auth-string",
                                                "optional": True,
                                            }
                                        },
                                    },
                                ],
                                "resources": {
                                    "requests": {"cpu": "250m", "memory": "512Mi"},
                                    "limits": {"memory": "1Gi"},
                                },
                            }
                        ],
                    },
                },
            },
        },
    ]


def kubernetes_base_job_template(spec: ClusterSpec) -> dict:
    """Work-pool base job template: each flow run is a Job on a GPU node.

    For ``prefect work-pool create --base-job-template``.
    """
    manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": "{{ name }}-",
            "namespace": "{{ namespace }}",
            "labels": "{{ labels }}",
        },
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "{{ service_account_name }}",
                    "nodeSelector": "{{ node_selector }}",
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "prefect-job",
                            "image": "{{ image }}",
                            "args": "{{ command }}",
                            "env": "{{ env }}",
                            "resources": {
                                "requests": {
                                    "nvidia.com/gpu": "{{ gpus }}",
                                    "cpu": "{{ cpu }}",
                                    "memory": "{{ memory }}",
                                },
                                "limits": {
                                    "nvidia.com/gpu": "{{ gpus }}",
                                    "memory": "{{ memory }}",
                                },
                            },
                            "volumeMounts": [
                                {"name": "dshm", "mountPath": "/dev/shm"},
                                {"name": "runs", "mountPath": RUNS_MOUNT},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "dshm",
                            "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"},
                        },
                        {"name": "runs", "persistentVolumeClaim": {"claimName": spec.runs_pvc}},
                    ],
                }
            },
        },
    }
    variables = {
        "name": {"type": "string", "default": "charrnn"},
        "namespace": {"type": "string", "default": spec.namespace},
        "labels": {"type": "object", "default": {"app.kubernetes.io/name": "charrnn"}},
        "image": {"type": "string", "default": spec.image},
        "command": {"type": "array", "items": {"type": "string"}, "default": []},
        "env": {"type": "array", "default": []},
        "service_account_name": {"type": "string", "default": "prefect-worker"},
        "node_selector": {"type": "object", "default": dict(spec.node_selector)},
        "gpus": {
            "type": "integer",
            "default": spec.gpus_per_node,
            "description": "GPUs per flow-run pod (one training process each)",
        },
        "cpu": {"type": "string", "default": spec.cpu},
        "memory": {"type": "string", "default": spec.memory},
        "shm_size": {"type": "string", "default": spec.shm},
        "finished_job_ttl": {"type": "integer", "default": 3600},
    }
    return {
        "job_configuration": {
            "command": "{{ command }}",
            "env": "{{ env }}",
            "labels": "{{ labels }}",
            "name": "{{ name }}",
            "namespace": "{{ namespace }}",
            "job_manifest": manifest,
            "cluster_config": "{{ cluster_config }}",
            "job_watch_timeout_seconds": None,
            "pod_watch_timeout_seconds": 300,
            "stream_output": True,
        },
        "variables": {
            "type": "object",
            "properties": {**variables, "cluster_config": {"type": "object", "default": None}},
        },
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded config) as readable ``|`` blocks."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def render(spec: ClusterSpec, config_yaml: str) -> dict[str, str]:
    """Relative path under infra/ -> file content."""

    def docs(objects: list[dict], title: str) -> str:
        header = (
            f"# {title}\n"
            "# Generated by `python infra/render.py`; "
            "edit the renderer or its options, not this file.\n"
        )
        return header + "---\n".join(
            yaml.dump(o, Dumper=_BlockDumper, sort_keys=False) for o in objects
        )

    return {
        "k8s/shared.yaml": docs(
            shared(spec, config_yaml),
            "Namespace, charrnn config and the shared runs volume (apply first)",
        ),
        "k8s/train-indexed-job.yaml": docs(
            indexed_job(spec),
            f"Multi-node training without operators: {spec.nnodes} pods x {spec.gpus_per_node} GPU",
        ),
        "k8s/train-pytorchjob.yaml": docs(
            pytorchjob(spec),
            (
                "Multi-node training with the Kubeflow Training Operator: "
                f"{spec.nnodes} pods x {spec.gpus_per_node} GPU"
            ),
        ),
        "k8s/prefect-worker.yaml": docs(
            prefect_worker(spec), f"Prefect worker for the {spec.work_pool} pool (Kubernetes)"
        ),
        "prefect/base-job-template-kubernetes.json": json.dumps(
            kubernetes_base_job_template(spec), indent=2
        )
        + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="charrnn YAML config (default: charrnn's defaults)")
    parser.add_argument("--nnodes", type=int, default=ClusterSpec.nnodes)
    parser.add_argument("--gpus-per-node", type=int, default=ClusterSpec.gpus_per_node)
    parser.add_argument("--image", default=ClusterSpec.image)
    parser.add_argument("--namespace", default=ClusterSpec.namespace)
    parser.add_argument("--out", type=Path, default=INFRA, help="where to write (default: infra/)")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files on disk instead of writing"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="charrnn config overrides"
    )
    args = parser.parse_args(argv)
    spec = ClusterSpec(
        nnodes=args.nnodes,
        gpus_per_node=args.gpus_per_node,
        image=args.image,
        namespace=args.namespace,
    )
    cfg = load_config(args.config, args.overrides)
    cfg.train.out_dir = f"{RUNS_MOUNT}/{spec.job}"
    files = render(spec, dump_config(cfg))
    stale = [
        rel
        for rel, text in files.items()
        if not (args.out / rel).is_file() or (args.out / rel).read_text() != text
    ]
    if args.check:
        for rel in stale:
            print(f"stale: infra/{rel} (run `python infra/render.py`)", file=sys.stderr)
        return 1 if stale else 0
    for rel, text in files.items():
        (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
        (args.out / rel).write_text(text)
        print(f"wrote {args.out / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
