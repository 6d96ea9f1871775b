"""The PyTorch and memory loaders on a CUDA device (skipped without one; run by `bench/gpu_check.sh`):
batches arrive on the GPU in the asked dtype and memory format, and decoding with nvJPEG
(``decode="device"``) gives the tensors of the CPU path within decoder and resampling rounding."""
from __future__ import annotations

import pytest
import torch

from loader_helpers import drain, make_jpegs, write_odd_format
from tdsa_fast.data.loading import build_loader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")

# nvJPEG and libjpeg-turbo may round the IDCT and chroma upsampling differently (a few levels
# at sharp edges), and the GPU path resizes with torch's antialiased bilinear instead of PIL's.
CUDA_DECODE_MAX_LEVELS = 12
CUDA_DECODE_MEAN_LEVELS = 1.0


@pytest.mark.parametrize("decode", ["pil", "device"])
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True)])
def test_batches_arrive_on_the_gpu(tmp_path, decode, dtype, channels_last):
    samples = make_jpegs(tmp_path, 10)
    with build_loader(samples, loader="torch", img_size=48, train=True, batch_size=4, workers=0, device="cuda",
                      dtype=dtype, channels_last=channels_last, decode=decode) as loader:
        for b in loader:
            assert b.images.is_cuda and b.labels.is_cuda and b.images.dtype == dtype
            assert b.images.is_contiguous(memory_format=torch.channels_last if channels_last
                                          else torch.contiguous_format)
            assert -1.0 <= float(b.images.float().min()) and float(b.images.float().max()) <= 1.0


@pytest.mark.parametrize("train", [False, True])
def test_gpu_decode_matches_the_cpu_path(tmp_path, train):
    samples = make_jpegs(tmp_path, 12) + [(str(write_odd_format(tmp_path, "png")), 1),
                                          (str(write_odd_format(tmp_path, "cmyk")), 2)]
    common = dict(loader="torch", img_size=64, train=train, batch_size=5, workers=0, seed=3)
    with build_loader(samples, device="cpu", decode="pil", **common) as cpu_loader:
        ref = drain(cpu_loader, epoch=1)
    with build_loader(samples, device="cuda", decode="device", **common) as gpu_loader:
        got = drain(gpu_loader, epoch=1)
    assert torch.equal(ref.indices, got.indices) and torch.equal(ref.labels, got.labels)
    diff = (ref.images - got.images).abs() * 127.5
    assert diff.max() <= CUDA_DECODE_MAX_LEVELS, f"max {diff.max():.1f} levels"
    assert diff.mean() <= CUDA_DECODE_MEAN_LEVELS, f"mean {diff.mean():.2f} levels"


@pytest.mark.parametrize("train,recipe", [(False, "released"), (True, "released"), (True, "rrc")])
def test_memory_loader_on_the_gpu_matches_the_cpu_one(tmp_path, train, recipe):
    """``--loader memory`` on CUDA (nvJPEG decode into GPU memory, each batch gathered and
    augmented there: what bench/gpu_reproduce.sh trains from) against the same loader on the
    CPU (PIL decode), then again from its cache."""
    samples = make_jpegs(tmp_path, 12)
    common = dict(loader="memory", decoder="torch", img_size=48, train=train, recipe=recipe, batch_size=5,
                  workers=0, seed=3)
    with build_loader(samples, device="cpu", **common) as cpu_loader:
        ref = drain(cpu_loader, epoch=1)
    with build_loader(samples, device="cuda", cache_dir=tmp_path / "cache", **common) as gpu_loader:
        assert gpu_loader.images.is_cuda and gpu_loader.images.dtype == torch.uint8
        got = drain(gpu_loader, epoch=1)
    assert torch.equal(ref.indices, got.indices) and torch.equal(ref.labels, got.labels)
    diff = (ref.images - got.images).abs() * 127.5
    assert diff.max() <= CUDA_DECODE_MAX_LEVELS, f"max {diff.max():.1f} levels"
    assert diff.mean() <= CUDA_DECODE_MEAN_LEVELS, f"mean {diff.mean():.2f} levels"
    with build_loader(samples, device="cuda", cache_dir=tmp_path / "cache", **common) as cached:
        assert cached.decode_seconds == 0.0  # loaded from the cache
        again = drain(cached, epoch=1)
    assert torch.equal(again.images, got.images)
