"""The functional API's and the CSV dataset's guarantees (docs/guarantees.md): second-order
gradients through the fused ops equal the reference's (never a silent None), targets of any
integer dtype, and CSV labels that the training split does not have are refused."""
from __future__ import annotations

import pytest
import torch

from tdsa_fast import functional as TF
from tdsa_fast._backend import fused_available
from tdsa_fast.data.datasets import load_split

needs_kernels = pytest.mark.skipif(not fused_available("cpu"), reason="the CPU kernels are not built")


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    middle = torch.rand(2, 18, 6, 6, generator=g, dtype=dtype).requires_grad_()   # S=2, cnum_middle=9
    high = torch.rand(2, 6, 3, 3, generator=g, dtype=dtype).requires_grad_()   # cnum_high=3, xi=3
    return middle, high


# the three fused forward ops, each as loss(middle, high, backend)
OPS = {
    "mc_terms": lambda lo, hi, b: sum(t.pow(2).sum() for t in TF.mc_terms(hi, torch.ones(1, 6, dtype=hi.dtype), 3,
                                                                            backend=b)),
    "topdown_gate": lambda lo, hi, b: TF.topdown_gate(lo, hi, mode="bilinear", backend=b).pow(2).sum(),
    "tdsa_loss": lambda lo, hi, b: TF.tdsa_loss(lo, hi, torch.tensor([0, 1]), backend=b,
                                               masks=(torch.ones(1, 18, dtype=lo.dtype),
                                                      torch.ones(1, 6, dtype=lo.dtype))),
}


@needs_kernels
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("op", sorted(OPS))
def test_double_backward_through_the_fused_ops_equals_the_reference(op, dtype, tol):
    """A gradient penalty: d/dx |dL/dx|^2, for both inputs."""
    def penalty_grads(backend):
        middle, high = _inputs(dtype)
        grads = torch.autograd.grad(OPS[op](middle, high, backend), (middle, high), create_graph=True, allow_unused=True)
        penalty = sum(g.pow(2).sum() for g in grads if g is not None)
        return torch.autograd.grad(penalty, (middle, high), allow_unused=True)

    want, got = penalty_grads("reference"), penalty_grads("fused")
    for w, g in zip(want, got):
        assert (w is None) == (g is None)
        if w is not None:
            assert g.abs().sum() > 0
            torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@needs_kernels
def test_gradgradcheck_of_the_fused_tdsa_terms():
    g = torch.Generator().manual_seed(1)  # tiny (gradgradcheck differentiates numerically): S=2, cnum_middle=3, xi=3
    middle = torch.rand(1, 6, 2, 2, generator=g, dtype=torch.float64).requires_grad_()
    high = torch.rand(1, 2, 1, 1, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.ones(1, 6, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda lo, hi: TF.tdsa_terms(lo, hi, mask, 3, backend="fused"), (middle, high))


@pytest.mark.parametrize("backend", ["reference", pytest.param("fused", marks=needs_kernels)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_targets_of_any_integer_dtype_give_the_int64_loss(dtype, backend):
    middle, high = _inputs(torch.float32)
    y = torch.tensor([1, 0])
    masks = (torch.ones(1, 18), torch.ones(1, 6))
    want = TF.tdsa_loss(middle, high, y, masks=masks, backend=backend)
    assert torch.equal(TF.tdsa_loss(middle, high, y.to(dtype), masks=masks, backend=backend), want)
    assert torch.equal(TF.mc_loss(high, y.to(dtype), 3, mask=masks[1], backend=backend),
                       TF.mc_loss(high, y, 3, mask=masks[1], backend=backend))


def _csv_root(tmp_path, train: str, test: str):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "test.csv").write_text(test)
    return tmp_path


@pytest.mark.parametrize("train, test, label", [
    ("path,label\na.jpg,0\na.jpg,99\n", "path,label\na.jpg,0\na.jpg,1000\n", "1000"),   # a typo of 100
    ("path,label\na.jpg,wren\na.jpg,finch\n", "path,label\na.jpg,finch\na.jpg,sparrow\n", "sparrow"),         # a name only in test
])
@pytest.mark.parametrize("split", ["train", "test"])
def test_a_csv_label_missing_from_the_training_split_is_refused(train, test, label, split, tmp_path):
    root = _csv_root(tmp_path, train, test)
    with pytest.raises(ValueError, match=rf"csv: {root / 'test.csv'}, line 3: label '{label}' is not a class of "
                                         rf"{root / 'train.csv'}"):
        load_split("csv", root, split)


def test_csv_test_labels_within_the_training_classes_still_load(tmp_path):
    root = _csv_root(tmp_path, "a.jpg,0\na.jpg,3\n", "a.jpg,2\n")  # 2 is within 0..3, though not in train
    assert load_split("csv", root, "test").num_classes == 4
