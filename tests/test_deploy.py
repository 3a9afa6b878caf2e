"""The deploy/ files are valid: Kubernetes objects against the client's model classes, the sbatch script in bash."""

import os
import subprocess

import pytest
import yaml

from tests.helpers import REPO_ROOT

models = pytest.importorskip("kubernetes.client.models")

DEPLOY = os.path.join(REPO_ROOT, "deploy")
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str}


def _build(data, type_name: str, where: str):
    """Builds the model `type_name` from YAML data, failing on unknown fields, wrong types and missing required ones."""
    if type_name.startswith(("list[", "List[")):
        assert isinstance(data, list), where
        return [_build(item, type_name[5:-1], f"{where}[{i}]") for i, item in enumerate(data)]
    if type_name.startswith(("dict(", "Dict[")):
        assert isinstance(data, dict), where
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {key: _build(value, value_type, f"{where}.{key}") for key, value in data.items()}
    if type_name in _PRIMITIVES:
        assert isinstance(data, _PRIMITIVES[type_name]), f"{where}: expected {type_name}, received {data!r}"
        return data
    klass = getattr(models, type_name)
    assert isinstance(data, dict), f"{where}: expected a mapping for {type_name}"
    attributes = {field: attribute for attribute, field in klass.attribute_map.items()}
    unknown = set(data) - set(attributes)
    assert not unknown, f"{where}: unknown fields {sorted(unknown)} for {type_name}"
    return klass(
        **{
            attributes[field]: _build(value, klass.openapi_types[attributes[field]], f"{where}.{field}")
            for field, value in data.items()
        }
    )


def _documents(name: str) -> list[dict]:
    with open(os.path.join(DEPLOY, name)) as f:
        return [document for document in yaml.safe_load_all(f) if document]


def _containers(pod_spec) -> dict:
    return {container.name: container for container in pod_spec.containers}


def test_the_indexed_job_and_its_service_are_valid_kubernetes_objects():
    service, job = _documents("kubernetes/indexed-job.yaml")
    service = _build(service, "V1Service", "Service")
    job = _build(job, "V1Job", "Job")
    assert service.spec.cluster_ip == "None" and job.spec.template.spec.subdomain == service.metadata.name
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == job.spec.parallelism
    args = _containers(job.spec.template.spec)["trainer"].args
    assert f"--num_workers={job.spec.completions}" in args
    assert f"--worker_host_template={job.metadata.name}-{{index}}.{service.metadata.name}:2222" in args
    actions = {
        (rule.action, tuple(rule.on_exit_codes.values) if rule.on_exit_codes else "disruption")
        for rule in job.spec.pod_failure_policy.rules
    }
    assert actions == {("Ignore", (143,)), ("Ignore", "disruption"), ("FailJob", (1,))}


def test_the_tfjob_and_jobset_wrap_valid_pod_and_job_templates():
    (tfjob,) = _documents("kubernetes/tfjob.yaml")
    assert tfjob["apiVersion"] == "kubeflow.org/v1" and tfjob["kind"] == "TFJob"
    assert set(tfjob["spec"]) == {"runPolicy", "tfReplicaSpecs"}
    for replica in tfjob["spec"]["tfReplicaSpecs"].values():
        assert set(replica) == {"replicas", "restartPolicy", "template"} and replica["restartPolicy"] == "ExitCode"
        # The training operator finds the container by this name.
        assert "tensorflow" in _containers(_build(replica["template"], "V1PodTemplateSpec", "TFJob").spec)
    (jobset,) = _documents("kubernetes/jobset.yaml")
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["kind"] == "JobSet"
    assert set(jobset["spec"]) == {"failurePolicy", "network", "replicatedJobs"}
    for replicated in jobset["spec"]["replicatedJobs"]:
        assert set(replicated) == {"name", "replicas", "template"}
        _build(replicated["template"], "V1JobTemplateSpec", "JobSet")


def test_the_vertex_specs_name_the_pools_and_the_metric():
    (job,) = _documents("vertex/custom_job.yaml")
    pools = job["workerPoolSpecs"]
    assert pools[0]["replicaCount"] == 1 and pools[2] == {}  # pool 0: the chief; pool 2: no parameter servers
    assert "--mode=continuous_eval" in pools[3]["containerSpec"]["args"]
    assert not any("--model_dir" in arg for pool in pools if pool for arg in pool["containerSpec"]["args"])
    (tuning,) = _documents("vertex/hptuning_job.yaml")
    (metric,) = tuning["studySpec"]["metrics"]
    args = tuning["trialJobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
    assert f"--hypertune_metric={metric['metricId']}" in args


def test_the_sbatch_script_parses_and_requeues_on_the_preemption_exit_code():
    script = os.path.join(DEPLOY, "slurm", "train.sbatch")
    subprocess.run(["bash", "-n", script], check=True)
    with open(script) as f:
        text = f.read()
    for directive in (
        "#SBATCH --signal=B:TERM@",
        "#SBATCH --requeue",
        "--cluster_from=slurm",
        "EXIT_CODE_PREEMPTED=143",
    ):
        assert directive in text
