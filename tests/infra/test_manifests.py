"""infra/: the Dockerfile, KubeRay manifests, CronJob, AWS cluster-launcher config, cron script and
job configs, checked as far as a machine without Kubernetes, Docker or a cloud account allows.

Every YAML parses; each Kubernetes object has its required fields; the RayCluster autoscales and
has a GPU group; the RayJobs run `jobs.train` / `jobs.infer` with arguments their parsers accept
and configs that exist in the image; the CronJob can do what it needs and no more; nothing is
exposed publicly, token auth is on everywhere, every pod runs as non-root and no credential is
written down; the AWS config passes Ray's own schema; the configs load with the project's own
loader; the cron script submits what it says without leaking the token.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
IMAGE_ROOT = "/home/ray/maskray"  # WORKDIR of infra/Dockerfile: the repo's layout under it

EXPECTED_FILES = [
    "README.md", "Dockerfile", "Dockerfile.dockerignore", "constraints.txt", "lock_constraints.py",
    "configs/infer.yaml", "configs/train.yaml",
    "k8s/kustomization.yaml", "k8s/namespace.yaml", "k8s/serviceaccount.yaml", "k8s/env.yaml",
    "k8s/networkpolicy.yaml", "k8s/raycluster.yaml", "k8s/rayjob-infer.yaml",
    "k8s/rayjob-train.yaml", "k8s/cronjob-infer.yaml", "k8s/pvc-train.yaml",
    "aws/cluster.yaml", "cron/submit-infer.sh",
]
CREDENTIAL_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "RAY_AUTH_TOKEN"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


# ----------------------------------------------------------------------------- helpers


def load_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def k8s_objects() -> list[tuple[Path, dict]]:
    """Every Kubernetes object under infra/k8s (kustomization.yaml is kustomize's, not the API's)."""
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in load_docs(p)]


def objects_of(kind: str) -> list[dict]:
    return [d for _, d in k8s_objects() if d["kind"] == kind]


def one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path.name}: expected one document, found {len(docs)}"
    return docs[0]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def pod_specs(node: Any) -> list[dict]:
    """Every pod spec (a mapping with `containers`) anywhere inside `node`."""
    return [n for n in walk(node) if isinstance(n, dict) and isinstance(n.get("containers"), list)]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, spec) of the standalone RayCluster and of every RayJob's own cluster."""
    specs = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in objects_of("RayCluster")]
    specs += [(f"RayJob {name_of(d)}", d["spec"]["rayClusterSpec"])
              for d in objects_of("RayJob") if "rayClusterSpec" in d["spec"]]
    return specs


def name_of(obj: dict) -> str:
    meta = obj["metadata"]
    return meta.get("name") or meta["generateName"]


def group_pods(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g)
                                                   for g in spec.get("workerGroupSpecs", [])]
    return [(name, g["template"]["spec"]) for name, g in groups]


def gpu_limit(pod: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in pod["containers"])


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pinned(name: str) -> str:
    for req in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==(\S+)", req.replace(" ", ""))
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no {name}")


def rayjob(file: str) -> dict:
    doc = one(K8S / file)
    assert doc["kind"] == "RayJob"
    return doc


def cron_script() -> Path:
    return INFRA / "cron" / "submit-infer.sh"


def text_files() -> list[Path]:
    return [p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


# ----------------------------------------------------------------------------- parsing


def test_expected_files_exist():
    missing = [f for f in EXPECTED_FILES if not (INFRA / f).is_file()]
    assert not missing, f"missing under infra/: {missing}"


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_yaml_files_are_found():
    # The parametrised test above must not pass vacuously.
    assert len(yaml_files()) >= 13


def test_kubernetes_objects_have_identity():
    objects = k8s_objects()
    assert len(objects) >= 10
    for path, obj in objects:
        where = f"{path.name}: {obj.get('kind')}"
        assert obj.get("apiVersion") and obj.get("kind"), where
        meta = obj.get("metadata") or {}
        assert meta.get("name") or meta.get("generateName"), f"{where} has no name"
        if obj["kind"] != "Namespace":
            assert meta.get("namespace") == "maskray", f"{where} is not in namespace maskray"


# ----------------------------------------------------------------------------- RayCluster


def test_raycluster_autoscales_with_a_gpu_group():
    (cluster,) = objects_of("RayCluster")
    spec = cluster["spec"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert spec["rayVersion"] == pinned("ray")
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"]
    assert head["rayStartParams"]["num-cpus"] == "0", "work must not land on the head"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if gpu_limit(g["template"]["spec"]) >= 1]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for group in spec["workerGroupSpecs"]:
        lo, n, hi = group["minReplicas"], group.get("replicas", 0), group["maxReplicas"]
        assert 0 <= lo <= n <= hi, f"group {group['groupName']}: replicas outside [min, max]"
    assert any(g["maxReplicas"] > g["minReplicas"] for g in gpu_groups), "GPU group cannot scale"
    for group in gpu_groups:
        pod = group["template"]["spec"]
        for c in pod["containers"]:
            res = c["resources"]
            assert res["limits"].get("nvidia.com/gpu") == res["requests"].get("nvidia.com/gpu")
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), \
            "GPU pods must tolerate the GPU nodes' taint"


def test_ray_start_params_are_ray_start_options():
    from ray.scripts.scripts import start

    options = {o for p in start.params for o in p.opts}
    for where, spec in ray_cluster_specs():
        groups = [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", [])
        for group in groups:
            for key in group["rayStartParams"]:
                assert f"--{key}" in options, f"{where}: rayStartParams {key!r} is no ray start flag"


# ----------------------------------------------------------------------------- RayJobs


def test_rayjob_infer_runs_incremental_inference_on_the_shared_cluster():
    job = rayjob("rayjob-infer.yaml")
    spec = job["spec"]
    assert re.match(r"python -m jobs\.infer\b", spec["entrypoint"])
    (cluster,) = objects_of("RayCluster")
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in spec
    # KubeRay never deletes a selected cluster; asking it to would be refused.
    assert not spec.get("shutdownAfterJobFinishes")
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert job["metadata"].get("generateName"), "each run needs its own generated name"


def test_rayjob_train_runs_on_its_own_cluster_and_cleans_up():
    spec = rayjob("rayjob-train.yaml")["spec"]
    assert re.match(r"python -m jobs\.train\b", spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in SUBMISSION_MODES
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pinned("ray")
    assert any(gpu_limit(pod) >= 1 for _, pod in group_pods(cluster))


def test_train_cluster_fits_the_train_config():
    from pipeline.config import load_config

    spec = rayjob("rayjob-train.yaml")["spec"]
    config = config_path_of(spec["entrypoint"])
    cfg = load_config(config).train
    cluster = spec["rayClusterSpec"]
    gpu_pods = sum(g["replicas"] for g in cluster["workerGroupSpecs"]
                   if gpu_limit(g["template"]["spec"]) >= 1)
    assert cfg.use_gpu and gpu_pods >= cfg.num_workers, "fewer GPU pods than Ray Train workers"
    (pvc,) = objects_of("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "checkpoints need a shared volume"
    for name, pod in group_pods(cluster):
        claims = {v["name"] for v in pod.get("volumes", [])
                  if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]}
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
                  if m["name"] in claims]
        assert mounts, f"{name} pods do not mount {pvc['metadata']['name']}"
        for path in (cfg.data, cfg.out):
            assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), \
                f"train path {path} is not on the shared volume of the {name} pods"


def test_rayjobs_keep_secrets_out_of_runtime_env():
    for job in objects_of("RayJob"):
        env = job["spec"].get("runtimeEnvYAML", "")
        assert not re.search(r"AWS_|TOKEN|SECRET|PASSWORD", env, re.I), name_of(job)


# ----------------------------------------------------------------------------- entrypoints


def module_commands() -> list[tuple[Path, str, list[str]]]:
    """(file, module, argv after the module) for every `python -m jobs.X ...` in a manifest, the
    cluster config, the cron script or the Dockerfile."""
    found = []
    sources = list(K8S.glob("*.yaml")) + [INFRA / "aws" / "cluster.yaml", cron_script(),
                                           INFRA / "Dockerfile"]
    for path in sources:
        for m in re.finditer(r"python3? -m (jobs\.\w+)", path.read_text()):
            found.append((path, m.group(1), []))
    for job in objects_of("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["python", "-m"], job["spec"]["entrypoint"]
        found.append((K8S, argv[2], argv[3:]))
    return found


def test_entrypoints_exist_and_answer_help():
    modules = sorted({module for _, module, _ in module_commands()})
    assert {"jobs.infer", "jobs.train"} <= set(modules)
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"{module} does not exist"
    procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in modules}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"python -m {module} --help: exit {proc.returncode}\n{err}"
        assert "usage:" in out


def test_rayjob_entrypoints_parse_with_the_jobs_own_parsers():
    for job in objects_of("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        module = importlib.import_module(argv[2])
        try:
            module.build_parser().parse_args(argv[3:])
        except SystemExit as exc:
            pytest.fail(f"{name_of(job)}: {argv[2]} refuses its arguments (exit {exc.code})")


def config_path_of(entrypoint: str) -> Path:
    """The repo file behind the image path a RayJob's --config names."""
    argv = shlex.split(entrypoint)
    image_path = argv[argv.index("--config") + 1]
    assert image_path.startswith(IMAGE_ROOT + "/"), f"{image_path} is not under {IMAGE_ROOT}"
    return REPO / image_path[len(IMAGE_ROOT) + 1:]


def test_rayjob_configs_exist_in_the_image():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(rf"^WORKDIR {re.escape(IMAGE_ROOT)}$", dockerfile, re.M)
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)\s+\S+$", dockerfile, re.M)
    for job in objects_of("RayJob"):
        path = config_path_of(job["spec"]["entrypoint"])
        assert path.is_file(), f"{name_of(job)} names a config that does not exist: {path}"
        rel = path.relative_to(REPO).as_posix()
        assert any(rel == c or rel.startswith(c.rstrip("/") + "/") for c in copied), \
            f"the Dockerfile does not copy {rel} into the image"


# ----------------------------------------------------------------------------- configs


def test_infer_config_loads_with_the_project_loader():
    from pipeline.config import load_config

    path = INFRA / "configs" / "infer.yaml"
    cfg = load_config(path)
    sections = set(one(path))
    # Inference settings only: the bundle's own model and tile policy must apply.
    assert sections <= {"infer", "storage"}, sections
    assert "infer" in sections
    assert cfg.infer.device == "cuda"


def test_train_config_loads_with_the_project_loader():
    from pipeline.config import load_config

    path = INFRA / "configs" / "train.yaml"
    cfg = load_config(path)
    sections = set(one(path))
    assert sections <= {"model", "tiling", "train", "storage"}, sections
    assert cfg.train.data and cfg.train.out and cfg.train.use_gpu


def test_config_loader_would_catch_a_typo(tmp_path):
    # The two tests above rely on the loader refusing unknown keys; make sure it still does.
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text((INFRA / "configs" / "infer.yaml").read_text().replace("batch_size", "batch_sise"))
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(bad)


# ----------------------------------------------------------------------------- CronJob


def kustomization() -> dict:
    return one(K8S / "kustomization.yaml")


def test_kustomization_accounts_for_every_manifest():
    k = kustomization()
    resources = set(k["resources"])
    generated = {src.split("=", 1)[-1] for g in k.get("configMapGenerator", [])
                 for src in g.get("files", [])}
    per_run = {"rayjob-infer.yaml", "rayjob-train.yaml", "pvc-train.yaml"}
    for name in resources | generated:
        assert (K8S / name).is_file(), f"kustomization names a missing file {name}"
    every = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert every <= resources | generated | per_run, every - resources - generated - per_run
    assert not resources & {"rayjob-infer.yaml", "rayjob-train.yaml"}, \
        "RayJobs are created per run, not applied"


def test_cronjob_creates_the_infer_rayjob_every_schedule_without_overlap():
    (cron,) = objects_of("CronJob")
    spec = cron["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,\-]+", f) for f in fields)
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    argv = container.get("command", []) + container["args"]
    assert "create" in argv, "the pod must create (not apply) a RayJob: its name is generated"
    target = argv[argv.index("--filename" if "--filename" in argv else "-f") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    mount_path, key = target.rsplit("/", 1)
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_map = volumes[mounts[mount_path]]["configMap"]["name"]
    (generator,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == config_map]
    sources = dict(s.split("=", 1) for s in generator["files"])
    assert sources[key] == "rayjob-infer.yaml", "the CronJob must create the infer RayJob"


def test_cronjob_service_account_may_create_rayjobs_and_nothing_else():
    (cron,) = objects_of("CronJob")
    account = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert any(sa["metadata"]["name"] == account for sa in objects_of("ServiceAccount"))
    roles = {r["metadata"]["name"]: r for r in objects_of("Role")}
    bound = [b["roleRef"]["name"] for b in objects_of("RoleBinding")
             if any(s["kind"] == "ServiceAccount" and s["name"] == account
                    and s.get("namespace") == cron["metadata"]["namespace"] for s in b["subjects"])]
    assert bound, f"no RoleBinding for {account}"
    rules = [rule for name in bound for rule in roles[name]["rules"]]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
               for r in rules)
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard {key} in the scheduler's Role"
        assert set(rule["verbs"]) <= {"create"}, rule
    assert not objects_of("ClusterRoleBinding") and not objects_of("ClusterRole")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
def test_kustomize_renders_and_ships_the_infer_rayjob():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    volumes = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    assert names and all(n in maps for n in names), "the CronJob mounts a ConfigMap that is not there"
    shipped = yaml.safe_load(maps[names[0]]["data"]["rayjob.yaml"])
    assert shipped == rayjob("rayjob-infer.yaml")


# ----------------------------------------------------------------------------- exposure, auth


def test_nothing_is_exposed_publicly():
    for path, obj in k8s_objects():
        assert obj["kind"] not in ("Ingress", "Route", "Gateway", "HTTPRoute"), path.name
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", path.name
        for pod in pod_specs(obj):
            assert not pod.get("hostNetwork"), f"{path.name}: hostNetwork"
            for c in pod["containers"]:
                assert not any("hostPort" in p for p in c.get("ports", [])), f"{path.name}: hostPort"
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
        assert head.get("enableIngress") is not True, where
        assert "headService" not in head or \
            head["headService"].get("spec", {}).get("type", "ClusterIP") == "ClusterIP", where


def test_network_policy_limits_who_reaches_the_ray_pods():
    (policy,) = objects_of("NetworkPolicy")
    spec = policy["spec"]
    selector = spec["podSelector"]
    assert any(e["key"] == "ray.io/cluster" for e in selector.get("matchExpressions", [])) or \
        "ray.io/cluster" in selector.get("matchLabels", {})
    assert "Ingress" in spec["policyTypes"]
    for rule in spec["ingress"]:
        for peer in rule.get("from", []):
            assert "ipBlock" not in peer, "no address range may reach the Ray pods"
        assert rule.get("from"), "an ingress rule without `from` admits everyone"


def test_token_authentication_is_on_everywhere():
    for where, spec in ray_cluster_specs():
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth off"
    for node in walk([d for _, d in k8s_objects()]):
        if isinstance(node, dict) and node.get("name") == "RAY_AUTH_MODE" and "value" in node:
            assert node["value"] == "token", "RAY_AUTH_MODE other than token"
    for job in objects_of("RayJob"):
        (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
        env = {e["name"]: e for e in submitter["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name_of(job)
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    text = cron_script().read_text()
    assert re.search(r"^export RAY_AUTH_MODE=token$", text, re.M)


def test_pods_run_as_non_root_without_privilege():
    pods = [(path.name, pod) for path, obj in k8s_objects() for pod in pod_specs(obj)]
    assert len(pods) >= 8  # head, cpu, gpu, 2 submitters, train head + gpu, CronJob
    for name, pod in pods:
        ctx = pod.get("securityContext", {})
        assert ctx.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert ctx.get("runAsUser", 0) != 0, f"{name}: runAsUser"
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert not sc.get("privileged"), f"{name}/{c['name']}"
            assert sc.get("runAsUser", 1) != 0, f"{name}/{c['name']}"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}/{c['name']}"
    for where, spec in ray_cluster_specs():
        auto = spec.get("autoscalerOptions", {}).get("securityContext")
        if spec.get("enableInTreeAutoscaling"):
            assert auto and auto.get("allowPrivilegeEscalation") is False, where


def test_no_credentials_are_written_down():
    for path, obj in k8s_objects():
        assert obj["kind"] != "Secret", f"{path.name}: Secrets are created out of band, never committed"
        for node in walk(obj):
            if isinstance(node, dict) and node.get("name") in CREDENTIAL_ENV:
                assert "value" not in node, f"{path.name}: literal {node['name']}"
                assert node["valueFrom"]["secretKeyRef"]["name"], path.name
    key_id = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    secret = re.compile(r"(aws_secret_access_key|AWS_SECRET_ACCESS_KEY)\s*[=:]\s*['\"]?"
                        r"[A-Za-z0-9/+]{40}")
    token = re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?[A-Za-z0-9_\-]{16,}")
    for path in text_files():
        text = path.read_text(errors="replace")
        for pattern in (key_id, secret, token):
            assert not pattern.search(text), f"{path.relative_to(REPO)}: looks like a credential"


def test_credential_checks_would_catch_a_literal_key():
    # The patterns above must match what they are meant to catch.
    leaked = "AWS_SECRET_ACCESS_KEY=" + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert re.search(r"(aws_secret_access_key|AWS_SECRET_ACCESS_KEY)\s*[=:]\s*['\"]?"
                     r"[A-Za-z0-9/+]{40}", leaked)
    assert re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", "AKIA" + "IOSFODNN7EXAMPLE")


def test_one_image_everywhere():
    images = {c["image"] for path, obj in k8s_objects() if obj["kind"] in ("RayCluster", "RayJob")
              for pod in pod_specs(obj) for c in pod["containers"]}
    aws = one(INFRA / "aws" / "cluster.yaml")["docker"]["image"]
    assert len(images) == 1 and images == {aws}, images | {aws}


# ----------------------------------------------------------------------------- AWS


def aws_config() -> dict:
    return one(INFRA / "aws" / "cluster.yaml")


def test_aws_cluster_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = aws_config()
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before bootstrapping AWS
    validate_config(config)
    assert config["provider"]["type"] == "aws" and config["provider"]["region"]
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    gpu = [n for n in nodes.values() if n["resources"].get("GPU", 0) >= 1]
    assert gpu and all(n["max_workers"] > n.get("min_workers", 0) for n in gpu)
    assert raw["docker"]["image"]


def test_aws_schema_check_would_catch_a_bad_key():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(aws_config())
    bad["idle_timeout_minute"] = bad.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(aws_config())
    bad["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_aws_cluster_is_private_token_authenticated_and_installs_nothing():
    from ray.autoscaler._private.util import prepare_config
    from ray.scripts.scripts import start

    raw = aws_config()
    config = prepare_config(copy.deepcopy(raw))
    assert config["provider"].get("use_internal_ips") is True
    for name, node in config["available_node_types"].items():
        # Without its own security group Ray creates one that opens SSH to 0.0.0.0/0.
        assert node["node_config"].get("SecurityGroupIds"), f"{name}: no SecurityGroupIds"
        assert node["node_config"].get("MetadataOptions", {}).get("HttpTokens") == "required"
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    options = {o for p in start.params for o in p.opts}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
        for command in starts:
            for flag in re.findall(r"\s(--[a-z-]+)", command):
                assert flag in options, f"{key}: ray start has no {flag}"
    assert any("auth_token" in remote for remote in raw["file_mounts"])
    # Ray's defaults pip-install unpinned packages unless these lists are given.
    for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands"):
        assert key in raw, f"{key} missing: Ray's default would apply"
        assert not any(re.search(r"\b(pip|conda|apt(-get)?)\b.*\binstall\b", c)
                       for c in config[key]), key


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def test_dockerfile_uses_rays_image_at_the_pinned_version():
    text = dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(\S+)", base)
    assert m, f"FROM {base} is not rayproject/ray:<version>-py3XX-<variant>"
    assert m.group(1) == pinned("ray")
    assert 10 <= int(m.group(2)) <= 12, "Python outside pyproject's requires-python"
    assert m.group(3) == "gpu" or m.group(3).startswith("cu"), "not a GPU variant"


def test_dockerfile_runs_as_a_non_root_user_without_sudo():
    text = dockerfile()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users, "no USER"
    last = users[-1].split(":")[0]
    assert last not in ("root", "0"), f"the image ends as {users[-1]}"
    assert re.search(r"sed -i '/\^ray ALL=NOPASSWD: ALL\$/d' /etc/sudoers", text), \
        "the base image's passwordless sudo must be removed"
    lines = text.splitlines()
    root_at = [i for i, l in enumerate(lines) if l.strip() in ("USER root", "USER 0")]
    pip_at = [i for i, l in enumerate(lines) if "pip install" in l]
    assert root_at and pip_at and max(root_at) < min(pip_at) and any(
        root_at[-1] < i < pip_at[0] for i, l in enumerate(lines) if l.startswith("USER 1000")), \
        "the project must be installed as the unprivileged user"


def test_dockerfile_installs_the_project_with_pins():
    text = dockerfile()
    for source in ("pyproject.toml", "pipeline/", "model/", "jobs/", "infra/constraints.txt",
                   "infra/configs/"):
        assert re.search(rf"^COPY .*\s{re.escape(source)}\s", text, re.M), f"{source} not copied"
    assert re.search(r"pip install --no-cache-dir --constraint infra/constraints\.txt \.", text)
    ignore = [line.strip() for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the build context must start from nothing"
    assert not any(p.startswith(("!.venv", "!.git", "!tests", "!.aws")) for p in ignore)


def test_constraints_pin_the_same_versions_as_pyproject():
    pins = {}
    for line in (INFRA / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([a-z0-9][a-z0-9\-]*)==([0-9][0-9A-Za-z.\-]*)", line)
            assert m, f"not name==version: {line!r}"
            assert "+" not in line, f"local version label: {line}"
            pins[m.group(1)] = m.group(2)
    for req in pyproject()["project"]["dependencies"]:
        name = re.split(r"[\[=<>~! ]", req, maxsplit=1)[0].lower().replace("_", "-")
        assert pins.get(name) == pinned(re.split(r"[\[=]", req)[0]), \
            f"{req} disagrees with infra/constraints.txt ({pins.get(name)}): " \
            f"run infra/lock_constraints.py"
    assert "boto3" in pins


# ----------------------------------------------------------------------------- cron script


@pytest.fixture
def fake_ray(tmp_path):
    """A stand-in `ray` that records its argv and auth environment, then exits 0."""
    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) is not installed; the cron script needs it")
    log = tmp_path / "ray-argv"
    stub = tmp_path / "ray"
    stub.write_text("#!/usr/bin/env bash\n"
                    f"printf '%s\\n' \"$@\" > {shlex.quote(str(log))}\n"
                    f"printf 'MODE=%s\\nCWD=%s\\n' \"$RAY_AUTH_MODE\" \"$PWD\" >> "
                    f"{shlex.quote(str(log))}\n"
                    "echo submitted\n")
    stub.chmod(0o755)
    return stub, log


def run_cron(tmp_path, fake, extra_env=None):
    token = tmp_path / "token"
    token.write_text("s3cr3t-token-value-0123456789abcdef")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RAY_CLI": str(fake),
           "MASKRAY_MODEL": "s3://b/models/m/bundle", "MASKRAY_INPUT": "s3://b/scenes/",
           "MASKRAY_OUTPUT": "s3://b/out/", "RAY_AUTH_TOKEN_PATH": str(token),
           "MASKRAY_LOCK": str(tmp_path / "lock"), **(extra_env or {})}
    return subprocess.run(["bash", str(cron_script())], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cron_script_is_valid_bash_and_never_traces():
    assert subprocess.run(["bash", "-n", str(cron_script())]).returncode == 0
    text = cron_script().read_text()
    assert not re.search(r"set -[a-z]*x|set -o xtrace", text), "tracing would print the token"
    assert not re.search(r"echo[^\n]*\$\{?RAY_AUTH_TOKEN\b", text)
    assert os.access(cron_script(), os.X_OK)


def test_cron_script_submits_one_run_per_slot(tmp_path, fake_ray):
    fake, log = fake_ray
    out = run_cron(tmp_path, fake)
    assert out.returncode == 0, out.stderr
    lines = log.read_text().splitlines()
    argv = lines[:lines.index("MODE=token") if "MODE=token" in lines else len(lines)]
    assert argv[:2] == ["job", "submit"]
    sid = argv[argv.index("--submission-id") + 1]
    assert re.fullmatch(r"maskray-infer-\d{8}T\d{4}Z", sid), sid
    assert argv[argv.index("--working-dir") + 1] == "."
    assert "MODE=token" in lines and f"CWD={REPO}" in lines
    entry = argv[argv.index("--") + 1:]
    assert entry[:3] == ["python", "-m", "jobs.infer"]
    from jobs.infer import build_parser

    args = build_parser().parse_args(entry[3:])
    assert (args.model, args.input, args.output) == ("s3://b/models/m/bundle", "s3://b/scenes/",
                                                    "s3://b/out/")
    assert (REPO / args.config).is_file()
    everything = log.read_text() + out.stdout + out.stderr
    assert "s3cr3t" not in everything, "the token leaked onto a command line or the output"


def test_cron_script_flags_are_ray_job_submit_options():
    from ray.dashboard.modules.job.cli import submit

    options = {o for p in submit.params for o in p.opts}
    text = cron_script().read_text()
    call = text[text.index('"$ray_cli" job submit'):text.index(" -- python")]
    for flag in re.findall(r"(--[a-z-]+)", call):
        assert flag in options, f"ray job submit has no {flag}"


def test_cron_script_refuses_to_run_without_a_token(tmp_path, fake_ray):
    fake, log = fake_ray
    out = run_cron(tmp_path, fake, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    assert out.returncode == 2
    assert "token" in out.stderr and not log.exists()


def test_cron_script_skips_while_the_previous_submission_runs(tmp_path, fake_ray):
    fake, log = fake_ray
    lock = tmp_path / "lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "30"])
    try:
        for _ in range(100):  # wait until the holder has the lock
            if subprocess.run(["flock", "--nonblock", str(lock), "true"]).returncode != 0:
                break
            time.sleep(0.05)
        out = run_cron(tmp_path, fake)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 0 and "skipping" in out.stderr
    assert not log.exists()


# ----------------------------------------------------------------------------- README


def test_readme_describes_every_file():
    readme = (INFRA / "README.md").read_text()
    for path in text_files():
        rel = path.relative_to(INFRA).as_posix()
        if rel == "README.md":
            continue
        assert rel in readme, f"infra/README.md does not mention {rel}"
    for phrase in ("ray job submit", "crontab", "RAY_AUTH_MODE=token", "kubectl apply -k",
                   "docker build"):
        assert phrase in readme, phrase
