"""model/bundle.py and `maskray model info|verify|init`, with tiny MobileNetV3 bundles."""

import json
import os
import shutil

import pytest
import torch

from jobs import model as model_job
from model.build import build_maskrcnn
from model.bundle import BUNDLE_JSON, WEIGHTS, load_bundle, save_bundle, verify_bundle
from model.weights import file_sha256
from pipeline.errors import BundleError


def _predict(model, image):
    with torch.no_grad():
        return model.eval()([image])[0]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """(bundle dir, config, the saved model's eval outputs on `image`, image), saved once."""
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_maskrcnn(cfg)
    path = tmp_path_factory.mktemp("bundles") / "tiny"
    save_bundle(path, model, cfg, tile_size=96, overlap=16, training={"epochs": 0},
                metrics={"mask_ap50": 0.0})
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(1)) * 255
    return path, cfg, _predict(model, image), image


def _cfg(**overrides):
    from model.config import ModelConfig

    values = dict(backbone="mobilenet_v3_fpn", classes=("building", "tree"), min_size=96,
                  max_size=96, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                  box_score_thresh=0.0, box_detections_per_img=10)
    values.update(overrides)
    return ModelConfig(**values)


def _clone(src, dst, edit=None, weights="link"):
    """Copy a bundle cheaply: bundle.json copied (optionally edited), weights.pt symlinked."""
    dst.mkdir()
    meta = json.loads((src / BUNDLE_JSON).read_text())
    if edit:
        edit(meta)
    (dst / BUNDLE_JSON).write_text(json.dumps(meta))
    if weights == "link":
        os.symlink(src / WEIGHTS, dst / WEIGHTS)
    elif weights == "copy":
        shutil.copyfile(src / WEIGHTS, dst / WEIGHTS)
    return dst


# ----------------------------------------------------------------------------- round trip


def test_round_trip_reproduces_outputs(bundle_dir):
    path, cfg, expected, image = bundle_dir
    bundle = load_bundle(path)
    assert bundle.model == cfg and (bundle.tile_size, bundle.overlap) == (96, 16)
    assert bundle.sha256 == file_sha256(str(path / WEIGHTS))
    assert bundle.model_id == bundle.sha256[:16] and len(bundle.model_id) == 16
    assert bundle.training == {"epochs": 0} and bundle.metrics == {"mask_ap50": 0.0}
    meta = json.loads((path / BUNDLE_JSON).read_text())
    assert meta["format"] == "maskray-bundle" and meta["version"] == 1
    assert meta["classes"] == ["building", "tree"] and meta["bands"] == [1, 2, 3]
    assert meta["normalization"]["mean"] == [123.675, 116.28, 103.53]
    assert meta["tiling"] == {"tile_size": 96, "overlap": 16}
    assert meta["created"].endswith("+00:00") and meta["files"] == {WEIGHTS: bundle.sha256}
    got = _predict(bundle.build_model(), image)
    assert expected["boxes"].shape[0] > 0
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(got[key], expected[key]), key
    unpasted = _predict(bundle.build_model(paste_masks=False), image)
    assert torch.equal(unpasted["boxes"], expected["boxes"])
    assert unpasted["masks"].shape[-2:] == (28, 28)


def test_head_sizes_travel_in_the_bundle(tmp_path):
    """A model with smaller FPN / heads round-trips; a bundle.json that names other head sizes
    than its weights have is refused; a bundle written before these keys existed still loads."""
    cfg = _cfg(fpn_channels=64, box_head_size=128, mask_head_layers=(64, 32))
    torch.manual_seed(0)
    model = build_maskrcnn(cfg)
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(1)) * 255
    expected = _predict(model, image)
    save_bundle(tmp_path / "small", model, cfg, tile_size=96, overlap=16)
    bundle = load_bundle(tmp_path / "small")
    assert bundle.model.mask_head_layers == (64, 32) and bundle.model.fpn_channels == 64
    got = _predict(bundle.build_model(), image)
    assert torch.equal(got["boxes"], expected["boxes"])

    def default_heads(meta):
        for key in ("fpn_channels", "box_head_size", "mask_head_layers"):
            del meta["model"][key]

    wrong = _clone(tmp_path / "small", tmp_path / "wrong", edit=default_heads)
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(wrong).build_model()
    torch.manual_seed(0)
    save_bundle(tmp_path / "full", build_maskrcnn(_cfg()), _cfg(), tile_size=96, overlap=16)
    old = _clone(tmp_path / "full", tmp_path / "old", edit=default_heads)
    assert load_bundle(old).model == _cfg()
    load_bundle(old).build_model()


def test_save_is_atomic_and_refuses_to_clobber(bundle_dir, tmp_path):
    path, cfg, _, _ = bundle_dir
    model = load_bundle(path, verify=False).build_model()
    target = tmp_path / "b"
    first = save_bundle(target, model, cfg, 96, 16)
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(target, model, cfg, 96, 16)
    second = save_bundle(target, model, cfg, 128, 32, overwrite=True)
    assert second.sha256 == first.sha256 and load_bundle(target).tile_size == 128
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or old dirs left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a model bundle"):
        save_bundle(tmp_path / "notes", model, cfg, 96, 16, overwrite=True)


def test_save_refuses_a_model_that_does_not_match_its_config(bundle_dir, tmp_path):
    path, _, _, _ = bundle_dir
    model = load_bundle(path, verify=False).build_model()
    with pytest.raises(BundleError, match="class-count mismatch"):
        save_bundle(tmp_path / "b", model, _cfg(classes=("a", "b", "c")), 96, 16)
    assert not (tmp_path / "b").exists()


def test_bundle_on_object_storage_uri(bundle_dir):
    pytest.importorskip("fsspec")
    path, cfg, expected, image = bundle_dir
    model = load_bundle(path, verify=False).build_model()
    uri = "memory://maskray-test-bundles/tiny"
    try:
        saved = save_bundle(uri, model, cfg, 96, 16)
        loaded = load_bundle(uri)
        assert loaded.sha256 == saved.sha256 == load_bundle(path, verify=False).sha256
        assert torch.equal(_predict(loaded.build_model(), image)["boxes"], expected["boxes"])
        with pytest.raises(BundleError, match="already holds a bundle"):
            save_bundle(uri, model, cfg, 96, 16)
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/maskray-test-bundles", recursive=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bundle_builds_on_cuda(bundle_dir):
    path, _, expected, image = bundle_dir
    model = load_bundle(path).build_model(device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    got = _predict(model, image.cuda())
    assert got["boxes"].device.type == "cuda"
    # Same weights, same input: kernels differ, so compare the top detection approximately.
    torch.testing.assert_close(got["scores"][:1].cpu(), expected["scores"][:1],
                               atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got["boxes"][:1].cpu(), expected["boxes"][:1], atol=0.5, rtol=1e-3)


# ----------------------------------------------------------------------------- refusals


def _set(key, value):
    def edit(meta):
        meta[key] = value
    return edit


def _set_classes(meta):
    meta["classes"] = meta["model"]["classes"] = ["building", "tree", "road"]


def _set_bands(meta):
    meta["bands"] = meta["model"]["bands"] = [1, 2, 3, 4]
    meta["model"]["image_mean"] = meta["model"]["image_std"] = [1.0] * 4
    meta["normalization"] = {"mean": [1.0] * 4, "std": [1.0] * 4}


def _set_checksum(meta):
    meta["files"][WEIGHTS] = "0" * 64


@pytest.mark.parametrize("edit,needle", [
    (_set_checksum, "checksum mismatch .* expected sha256 0000000000000000"),
    (_set_classes, "class-count mismatch: 3 classes .* 3 outputs in the weights"),
    (_set_bands, "band-count mismatch: 4 bands .* takes 3"),
    (_set("format", "something-else"), "unknown format 'something-else'"),
    (_set("version", 2), "unsupported bundle version 2"),
    (_set("classes", ["x", "y"]), "'classes' .* disagrees with its model section"),
    (lambda meta: meta["model"].update(flavour="x"), "unknown config key 'flavour'"),
    (lambda meta: meta.pop("tiling"), "lacks or mangles 'tiling'"),
])
def test_bad_bundle_json_is_refused(bundle_dir, tmp_path, edit, needle):
    path = _clone(bundle_dir[0], tmp_path / "b", edit)
    with pytest.raises(BundleError, match=needle):
        load_bundle(path)


def test_missing_files_are_refused(bundle_dir, tmp_path):
    with pytest.raises(BundleError, match="is not a model bundle: bundle.json not found"):
        load_bundle(tmp_path)
    path = _clone(bundle_dir[0], tmp_path / "b", weights=None)
    with pytest.raises(BundleError, match="weights.pt is missing"):
        load_bundle(path, verify=False)


def test_corrupted_weights_are_refused_even_without_verify(bundle_dir, tmp_path):
    path = _clone(bundle_dir[0], tmp_path / "b", weights="copy")
    with open(path / WEIGHTS, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    bundle = load_bundle(path, verify=False)  # metadata only
    with pytest.raises(BundleError, match="checksum mismatch"):
        bundle.build_model()
    with pytest.raises(BundleError, match="checksum mismatch"):
        verify_bundle(path)


# ----------------------------------------------------------------------------- CLI


def test_cli_init_info_verify(tmp_path, capsys):
    pytest.importorskip("pipeline.config")
    out = tmp_path / "init"
    sets = ["--set", "model.backbone=mobilenet_v3_fpn", "--set", "model.classes=[car, truck]",
            "--set", "tiling.tile_size=256", "--set", "tiling.overlap=32",
            "--set", "model.mask_head_layers=[128, 64]"]
    assert model_job.main(["init", "--out", str(out), "--seed", "3", *sets]) == 0
    model_id = load_bundle(out).model_id
    assert model_id in capsys.readouterr().out

    assert model_job.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("mobilenet_v3_fpn", "1=car, 2=truck", "tile_size 256 px, overlap 32 px",
                   model_id, "123.675", "min_size 800", "parameters",
                   "FPN 256 channels, box head 1024, mask head convs [128, 64]"):
        assert needle in text, needle
    assert model_job.main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_id"] == model_id and info["classes"] == {"1": "car", "2": "truck"}
    assert info["parameters"] == info["trainable_parameters"] > 1_000_000
    assert info["heads"] == {"fpn_channels": 256, "box_head_size": 1024,
                             "mask_head_layers": [128, 64], "norm": "none"}
    assert info["anchors"]["scales"] == [1.0]
    assert info["training"] == {"kind": "init", "seed": 3, "backbone_weights": None}

    assert model_job.main(["verify", str(out)]) == 0
    assert f"ok: {out}" in capsys.readouterr().out

    again = tmp_path / "again"
    assert model_job.main(["init", "--out", str(again), "--seed", "3", *sets, "--quiet"]) == 0
    assert load_bundle(again, verify=False).model_id == model_id  # seeded: same weights, same id


def test_cli_errors_have_exit_codes(bundle_dir, tmp_path, capsys):
    pytest.importorskip("pipeline.config")
    broken = _clone(bundle_dir[0], tmp_path / "broken", _set_checksum)
    assert model_job.main(["verify", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("maskray: error:") and "checksum mismatch" in err
    assert len(err.strip().splitlines()) == 1
    assert model_job.main(["info", str(tmp_path / "nowhere")]) == 1
    assert "not a model bundle" in capsys.readouterr().err
    assert model_job.main(["init", "--out", str(tmp_path / "x"),
                           "--set", "model.backbone=vgg16"]) == 2
    assert "resnet50_fpn, resnet50_fpn_v2" in capsys.readouterr().err
    assert model_job.main(["init", "--out", str(tmp_path / "y"), "--set", "model.bands=[1,2]"]) == 2
    assert "model.image_mean" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        model_job.main(["frobnicate"])
    assert exc.value.code == 2
