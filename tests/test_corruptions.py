"""CIFAR-10-C common corruptions and the imagecorruptions compatibility patches."""

import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from rome_bench.errors import ConfigError
from rome_bench.threats import imagecorruptions_compat as compat
from rome_bench.threats.base import THREATS
from rome_bench.threats.corruptions import (
    CORRUPTIONS,
    CommonCorruption,
    centre_zoom,
    cifar10_c_threats,
    corrupt_batch,
    local_shuffle,
)
from tests.measures import accuracy

RANDOM_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost",
                      "fog", "elastic_transform")


# ----------------------------------------------------------------------------------------- compat module


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("name", compat.get_corruption_names("all"))
def test_compat_runs_all_19_imagecorruptions(name):
    assert len(compat.get_corruption_names("all")) == 19
    rng = np.random.default_rng(0)
    for size in (32, 224):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for severity in (1, 5):
            out = compat.corrupt(image, corruption_name=name, severity=severity)
            assert out.shape == image.shape and out.dtype == np.uint8


def test_compat_spatter_without_liquid_keeps_the_image():
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    empty_masks = 0
    for seed in range(60):  # the library draws from numpy's global RNG
        np.random.seed(seed)
        with np.errstate(invalid="ignore"):
            unpatched = np.asarray(compat._original_spatter(Image.fromarray(image), 1), dtype=np.float64)
        if not np.isnan(unpatched).any():
            continue
        empty_masks += 1
        np.random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            out = compat.corrupt(image, corruption_name="spatter", severity=1)
        assert np.abs(out.astype(int) - 200).max() <= 1
    assert empty_masks >= 1, "expected some seeds where no liquid survives at 32×32, severity 1"


def test_compat_leaves_no_stand_in_and_plasma_fractal_uses_the_given_generator():
    assert "pkg_resources" not in sys.modules or getattr(sys.modules["pkg_resources"], "__file__", None)
    state = np.random.get_state()[1].copy()
    first = compat.plasma_fractal(32, 2.0, np.random.default_rng(3))
    second = compat.plasma_fractal(32, 2.0, np.random.default_rng(3))
    assert np.array_equal(first, second) and first.shape == (32, 32) and first.dtype == np.float64
    assert first.min() == 0 and first.max() == 1 and first.std() > 0.05
    assert np.array_equal(np.random.get_state()[1], state), "plasma_fractal(rng=...) must not touch numpy's global RNG"


# ---------------------------------------------------------------------------------------------- threat


@pytest.fixture(scope="module")
def few_images(synthetic_test):
    images, labels = synthetic_test.dataset.batch(list(range(16)))
    return images, labels


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_output_in_box_same_shape_and_budget(name, few_images, undefended_model):
    images, labels = few_images
    for severity in (1, 5):
        threat = CommonCorruption(name, severity)
        torch.manual_seed(0)
        out = threat(undefended_model, images[:8], labels[:8])
        assert out.shape == images[:8].shape and out.dtype == images.dtype
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        assert torch.equal(out * 255, (out * 255).round()), "outputs are 8-bit images as in CIFAR-10-C"
        check = threat.budget().check(images[:8], out)
        assert (check.measured <= check.limit).all() and "no norm bound" in check.description


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "elastic_transform"])
def test_severity_5_changes_images_more_than_severity_1(name, few_images):
    images, _ = few_images
    change = []
    for severity in (1, 5):
        torch.manual_seed(0)
        change.append((corrupt_batch(images, name, severity) - images).abs().mean().item())
    assert change[1] > change[0] > 0, change


def test_elastic_severity_1_is_a_pure_affine_warp(few_images):
    # CIFAR-10-C's elastic severity 1 has α = 0 (affine jitter 2.56 px only), so it moves pixels more than
    # severity 5 (jitter 0.96 px, α = 3.2): the reference constants are not monotone in pixel change.
    images, _ = few_images
    torch.manual_seed(0)
    warped = corrupt_batch(images, "elastic_transform", 1)
    assert (warped - images).abs().mean() > 0.01


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_under_torch_seed_and_numpy_global_rng_untouched(name, few_images):
    images, _ = few_images
    state = np.random.get_state()[1].copy()
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(corrupt_batch(images[:4], name, 5))
    assert torch.equal(outputs[0], outputs[1])
    assert torch.equal(outputs[0], outputs[2]) != (name in RANDOM_CORRUPTIONS)
    assert np.array_equal(np.random.get_state()[1], state), "numpy's global RNG must not be used"


def test_undefended_model_loses_accuracy(undefended_model, correct_batch):
    images, labels = correct_batch
    assert accuracy(undefended_model, images, labels) == 1.0
    results = {}
    for name in CORRUPTIONS:
        torch.manual_seed(0)
        results[name] = accuracy(undefended_model, CommonCorruption(name, 5)(undefended_model, images, labels), labels)
    assert results["gaussian_noise"] <= 0.9 and results["fog"] <= 0.5, results
    assert sum(results.values()) / len(results) <= 0.75, results
    torch.manual_seed(0)
    mild = CommonCorruption("fog", 1)(undefended_model, images, labels)
    assert accuracy(undefended_model, mild, labels) > results["fog"]


def test_glass_blur_batched_shuffle_matches_sequential_swaps():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    offsets = rng.integers(-1, 1, size=(3, 30, 30, 2))
    expected = images.copy()
    for b in range(3):  # the reference's scan, with its numpy-view "swap"
        for i, h in enumerate(range(31, 1, -1)):
            for j, w in enumerate(range(31, 1, -1)):
                dx, dy = offsets[b, i, j]
                expected[b, h, w], expected[b, h + dy, w + dx] = expected[b, h + dy, w + dx], expected[b, h, w]
    shuffled = local_shuffle(images, offsets)
    assert np.array_equal(shuffled, expected) and not np.array_equal(shuffled, images)


@pytest.mark.parametrize("shape", [(32, 32), (40, 48)])
def test_batched_centre_zoom_matches_imagecorruptions_clipped_zoom(shape):
    images = np.random.default_rng(0).random((3, *shape, 3)).astype(np.float32)
    for factor in (1.0, 1.07, 1.25, 2.25):
        expected = []
        for image in images:  # imagecorruptions' clipped_zoom, then make_cifar_c's centre trim
            zoomed = compat.clipped_zoom(image, factor)
            top, left = (zoomed.shape[0] - shape[0]) // 2, (zoomed.shape[1] - shape[1]) // 2
            expected.append(zoomed[top:top + shape[0], left:left + shape[1]])
        np.testing.assert_allclose(centre_zoom(images, factor), np.stack(expected), atol=1e-6)


def test_contrast_and_gaussian_noise_use_the_cifar_constants(few_images):
    images, _ = few_images
    pixels = (images * 255).round()
    means = pixels.mean(dim=(2, 3), keepdim=True)
    expected = (((pixels - means) * 0.15 + means).clamp(0, 255)).floor() / 255  # CIFAR c = 0.15 (ImageNet: 0.05)
    assert torch.allclose(corrupt_batch(images, "contrast", 5), expected, atol=1.01 / 255)
    torch.manual_seed(0)
    noise = corrupt_batch(images, "gaussian_noise", 5) - images
    inside = ((images > 0.3) & (images < 0.7)).expand_as(noise)  # away from clipping
    assert 0.09 < noise[inside].std() < 0.11  # σ = 0.10 (ImageNet: 0.38)


def test_registered_and_rebuilt_from_params():
    assert THREATS.get("corruption") is CommonCorruption
    threat = CommonCorruption("fog", 3)
    assert CommonCorruption.tag == "unseen" and CommonCorruption.column == "corr"
    copy = type(threat)(**threat.params())
    assert copy.params() == {"corruption": "fog", "severity": 3, "corruptions_dir": None, "given_clean": False}
    assert copy.key == threat.key


def test_cifar10_c_threats_lists_all_75():
    threats = cifar10_c_threats()
    assert len(threats) == 75 and len({t.key for t in threats}) == 75
    assert [(t.corruption, t.severity) for t in threats[:6]] == [("gaussian_noise", s) for s in range(1, 6)] + [
        ("shot_noise", 1)]
    assert [t.corruption for t in threats[::5]] == list(CORRUPTIONS)


# ------------------------------------------------------------------------------------------ stored .npy


@pytest.fixture
def stored_dir(tmp_path):
    """A fake CIFAR-10-C directory with N = 4 images per severity; image k has every pixel equal to 10·k."""
    stored = np.broadcast_to((np.arange(20, dtype=np.uint8) * 10)[:, None, None, None], (20, 32, 32, 3))
    np.save(tmp_path / "gaussian_noise.npy", np.ascontiguousarray(stored))
    np.save(tmp_path / "fog.npy", np.zeros((21, 32, 32, 3), dtype=np.uint8))  # not divisible by 5
    np.save(tmp_path / "snow.npy", np.zeros((20, 32, 32), dtype=np.uint8))  # no channel axis
    return tmp_path


def test_loads_stored_images_by_example_id(stored_dir, few_images):
    images, labels = few_images
    threat = CommonCorruption("gaussian_noise", 3, corruptions_dir=str(stored_dir))
    assert CommonCorruption.uses_example_ids
    out = threat(None, images[:3], labels[:3], example_ids=[2, 0, 3])
    expected = torch.tensor([10 * (8 + 2), 10 * (8 + 0), 10 * (8 + 3)], dtype=torch.float32) / 255  # (3 − 1)·4 + id
    assert out.shape == images[:3].shape and torch.equal(out[:, 0, 0, 0], expected)
    assert torch.equal(out, expected.view(3, 1, 1, 1).expand_as(out))
    same = threat(None, images[:3], labels[:3], example_ids=torch.tensor([2, 0, 3]))
    assert torch.equal(out, same)


def test_stored_labels_must_match_the_batch_order(tmp_path, few_images):
    images, labels = few_images
    stored = np.zeros((20, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "gaussian_noise.npy", stored)
    ids = [0, 1, 2]
    np.save(tmp_path / "labels.npy", np.tile(labels[:4].numpy(), 5))  # the batch's order: accepted
    CommonCorruption("gaussian_noise", 2, corruptions_dir=str(tmp_path))(None, images[:3], labels[:3], example_ids=ids)
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "gaussian_noise.npy", stored)
    np.save(other / "labels.npy", np.tile((labels[:4].numpy() + 1) % 10, 5))  # another order: refused
    with pytest.raises(ConfigError, match="original test order"):
        CommonCorruption("gaussian_noise", 2, corruptions_dir=str(other))(None, images[:3], labels[:3], example_ids=ids)


def test_generated_threat_ignores_example_ids(few_images):
    images, labels = few_images
    threat = CommonCorruption("shot_noise", 2)
    torch.manual_seed(0)
    with_ids = threat(None, images[:4], labels[:4], example_ids=[5, 6, 7, 8])
    torch.manual_seed(0)
    assert torch.equal(with_ids, threat(None, images[:4], labels[:4]))


def test_config_errors(stored_dir, few_images):
    images, labels = few_images
    cases = [
        (lambda: CommonCorruption("speckle_noise", 1), "valid: gaussian_noise"),
        (lambda: CommonCorruption("fog", 0), "severity must be one of 1, 2, 3, 4, 5"),
        (lambda: CommonCorruption("fog", 6), "severity"),
        (lambda: CommonCorruption("fog", 2.5), "severity"),
        (lambda: CommonCorruption("frost", 1, corruptions_dir=str(stored_dir)), "not found"),
        (lambda: CommonCorruption("fog", 1, corruptions_dir=str(stored_dir)), "(21, 32, 32, 3)"),
        (lambda: CommonCorruption("snow", 1, corruptions_dir=str(stored_dir)), "(5·N, H, W, 3)"),
    ]
    threat = CommonCorruption("gaussian_noise", 1, corruptions_dir=str(stored_dir))
    cases += [
        (lambda: threat(None, images[:2], labels[:2]), "needs example_ids"),
        (lambda: threat(None, images[:2], labels[:2], example_ids=[0, 4]), "[0, 4)"),
        (lambda: threat(None, images[:2], labels[:2], example_ids=[0]), "1 example ids for 2 images"),
        (lambda: threat(None, torch.zeros(1, 3, 64, 64), labels[:1], example_ids=[0]), "32×32"),
    ]
    for make, fragment in cases:
        with pytest.raises(ConfigError) as error:
            make()
        assert fragment in str(error.value) and "\n" not in str(error.value)
