"""Tests of balance.engine.data: shapes, seeding, the low-rank target's spectrum, losses against written-out formulas,
CSV."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from balance.config import ConfigError, DataConfig
from balance.engine.data import DATASETS, LOSSES, _orthonormal, loss_value, make_task

GENERATED = [name for name in DATASETS if name != "csv"]
PLANAR = ["moons", "circles", "spiral", "xor"]


def _cfg(name: str, **changes: object) -> DataConfig:
    return DataConfig(name=name, samples=changes.pop("samples", 64), **changes)  # type: ignore[arg-type]


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _csv_task(path: str, **changes: object) -> object:
    return make_task(DataConfig(name="csv", csv_path=path, **changes))  # type: ignore[arg-type]


# --- shapes, dtypes, seeding --------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert list(DATASETS) == ["lowrank", "teacher", "moons", "circles", "spiral", "xor", "images", "csv"]
    for dataset in DATASETS.values():
        assert dataset.default_loss in dataset.losses and set(dataset.losses) <= set(LOSSES) and dataset.help


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", GENERATED)
def test_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    cfg = _cfg(name, d1=7, d2=5, rank=3, input_dim=6, output_dim=2, image_size=6)
    task = make_task(cfg, dtype)
    assert task.name == name and task.loss == DATASETS[name].default_loss
    expected = {
        "lowrank": ((5,), 7, (7, 5)),
        "teacher": ((6,), 2, (64, 2)),
        "images": ((1, 6, 6), 4, (64,)),
        **{p: ((2,), 1, (64, 1)) for p in PLANAR},
    }[name]
    assert (task.input_shape, task.output_dim, tuple(task.targets.shape)) == expected
    if name == "lowrank":
        assert task.inputs is None and task.samples == 5
    else:
        assert task.inputs is not None and task.inputs.shape == (64, *task.input_shape) and task.samples == 64
        assert task.inputs.dtype == dtype
    assert task.targets.dtype == (torch.int64 if name == "images" else dtype)


@pytest.mark.parametrize("name", ["teacher", "images"])
def test_image_input(name: str) -> None:
    task = make_task(_cfg(name, image_size=5), image_input=True)
    assert task.inputs is not None and task.inputs.shape == (64, 1, 5, 5) and task.input_shape == (1, 5, 5)


@pytest.mark.parametrize("name", ["lowrank", *PLANAR])
def test_image_input_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="images"):
        make_task(_cfg(name), image_input=True)


@pytest.mark.parametrize("name", GENERATED)
def test_seeded(name: str) -> None:
    a, b = make_task(_cfg(name, seed=3)), make_task(_cfg(name, seed=3))
    other = make_task(_cfg(name, seed=4))
    single = make_task(_cfg(name, seed=3), torch.float32)
    assert torch.equal(a.targets, b.targets)
    if a.inputs is None:
        assert not torch.equal(a.targets, other.targets)
        assert torch.equal(single.targets, a.targets.float())
    else:
        assert b.inputs is not None and other.inputs is not None and single.inputs is not None
        assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, other.inputs)
        assert torch.equal(single.inputs, a.inputs.float())  # drawn in float64, then cast


# --- lowrank ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [(), (10.0, 3.0, 2.5, 0.5)])
def test_lowrank_spectrum(values: tuple[float, ...]) -> None:
    M = make_task(DataConfig(name="lowrank", d1=30, d2=12, rank=4, singular_values=values, seed=1)).targets
    expected = torch.tensor(values or (4.0, 3.0, 2.0, 1.0), dtype=torch.float64)
    sv = torch.linalg.svdvals(M)
    torch.testing.assert_close(sv[:4], expected, rtol=0, atol=1e-10)
    assert sv[4:].abs().max() < 1e-10
    assert torch.linalg.matrix_rank(M) == 4


def test_orthonormal() -> None:
    gen = torch.Generator().manual_seed(0)
    Q = _orthonormal(20, 6, gen)
    torch.testing.assert_close(Q.T @ Q, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-12)
    # Sign-fixed: Q^T G = R has a positive diagonal, so Q is a function of G alone.
    G = torch.randn(20, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (torch.diagonal(Q.T @ G) > 0).all()


# --- losses -------------------------------------------------------------------------------------------------


def test_squared_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    f, y = torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    hand = sum(0.5 * sum((f[i, j] - y[i, j]) ** 2 for j in range(3)) for i in range(5)) / 5
    torch.testing.assert_close(loss_value(f, y, "squared"), hand, rtol=1e-14, atol=0)
    frob = 0.5 * sum(float(f[i, j] - y[i, j]) ** 2 for i in range(5) for j in range(3))  # lowrank: a sum
    torch.testing.assert_close(loss_value(f, y, "squared", "lowrank").item(), frob, rtol=1e-14, atol=0)


def test_logistic_loss() -> None:
    f = torch.tensor([[-800.0], [-2.0], [0.0], [3.0], [800.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [-1.0], [1.0], [-1.0], [1.0]], dtype=torch.float64)
    terms = [800.0, math.log1p(math.exp(-2.0)), math.log(2.0), 3.0 + math.log1p(math.exp(-3.0)), 0.0]
    torch.testing.assert_close(loss_value(f, y, "logistic").item(), sum(terms) / 5, rtol=1e-14, atol=0)
    # log(1 + e^-50) = e^-50 to double precision: the stable form keeps it, the naive one rounds to 0
    tiny = loss_value(
        torch.tensor([[50.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64), "logistic"
    )
    assert tiny.item() == pytest.approx(math.exp(-50.0), rel=1e-12)


def test_cross_entropy_loss() -> None:
    f = torch.tensor([[2.0, -1.0, 0.5], [100.0, 0.0, -100.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    hand = 0.0
    for i in range(3):
        top = max(f[i].tolist())
        hand += top + math.log(sum(math.exp(v - top) for v in f[i].tolist())) - float(f[i, y[i]])
    torch.testing.assert_close(loss_value(f, y, "cross_entropy").item(), hand / 3, rtol=1e-14, atol=0)


def test_loss_checks_shapes() -> None:
    with pytest.raises(ValueError, match="does not match"):
        loss_value(torch.zeros(4, 1), torch.zeros(4), "squared")
    with pytest.raises(ValueError, match="do not match"):
        loss_value(torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.int64), "cross_entropy")
    with pytest.raises(ValueError, match="unknown loss"):
        loss_value(torch.zeros(4, 1), torch.zeros(4, 1), "hinge")


@pytest.mark.parametrize("name", GENERATED)
def test_loss_value_on_tasks(name: str) -> None:
    task = make_task(_cfg(name, d1=6, d2=4, rank=2))
    if task.loss == "cross_entropy":
        pred = torch.zeros(task.samples, task.output_dim, dtype=torch.float64)
        assert loss_value(pred, task.targets, task.loss, name).item() == pytest.approx(math.log(4))
    else:
        pred = torch.zeros_like(task.targets)
        expected = {"logistic": math.log(2), "squared": None}[task.loss]
        value = loss_value(pred, task.targets, task.loss, name)
        assert value.item() > 0 and (expected is None or value.item() == pytest.approx(expected))


@pytest.mark.parametrize(
    ("name", "loss"),
    [("lowrank", "logistic"), ("teacher", "cross_entropy"), ("images", "squared"), ("moons", "cross_entropy")],
)
def test_unsupported_loss(name: str, loss: str) -> None:
    with pytest.raises(ConfigError, match=f"data.loss = '{loss}': the {name} dataset allows"):
        make_task(_cfg(name, loss=loss))


def test_planar_squared() -> None:
    task = make_task(_cfg("spiral", loss="squared"))
    assert task.loss == "squared" and set(task.targets.flatten().tolist()) == {-1.0, 1.0}


# --- the generated sets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [64, 65])
@pytest.mark.parametrize("name", PLANAR)
def test_planar_balanced(name: str, samples: int) -> None:
    y = make_task(_cfg(name, samples=samples)).targets
    assert set(y.flatten().tolist()) == {-1.0, 1.0}
    assert abs(int((y > 0).sum()) - int((y < 0).sum())) == samples % 2
    assert int((y[:16] > 0).sum()) not in (0, 16)  # shuffled: a prefix holds both classes


@pytest.mark.parametrize("name", PLANAR)
def test_planar_unit_scale(name: str) -> None:
    task = make_task(_cfg(name, noise=0.0, samples=200))
    assert task.inputs is not None
    torch.testing.assert_close(task.inputs.mean(0), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(task.inputs.std(0, correction=0), torch.ones(2, dtype=torch.float64))


def test_xor_and_circles_labels() -> None:
    xor = make_task(_cfg("xor", noise=0.0))
    assert xor.inputs is not None
    assert torch.equal(torch.sign(xor.inputs[:, 0] * xor.inputs[:, 1]), xor.targets[:, 0])
    circles = make_task(_cfg("circles", noise=0.0))
    assert circles.inputs is not None
    r = circles.inputs.norm(dim=1)
    assert r[circles.targets[:, 0] > 0].max() < r[circles.targets[:, 0] < 0].min()


def test_images_classes() -> None:
    task = make_task(_cfg("images", samples=80, noise=0.0))
    assert task.inputs is not None
    assert torch.equal(torch.bincount(task.targets), torch.full((4,), 20))
    lit = task.inputs.flatten(1).sum(1)
    L = 4  # image_size 8 -> shapes in a 4 x 4 box: bar 4, bar 4, outline 12, X 8 pixels
    expected = torch.tensor([L, L, 4 * L - 4, 2 * L], dtype=torch.float64)[task.targets]
    assert torch.equal(lit, expected)


# --- CSV ----------------------------------------------------------------------------------------------------


def test_csv_regression(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,flag,y\n1,5,7,0.5\n2,5,7,1.5\n3,5,8,-2\n4,5,7,3\n")
    task = _csv_task(path)
    assert isinstance(task.inputs, torch.Tensor) and task.inputs.shape == (4, 3)
    assert task.loss == "squared" and task.output_dim == 1 and task.input_shape == (3,)
    torch.testing.assert_close(task.targets, torch.tensor([[0.5], [1.5], [-2.0], [3.0]], dtype=torch.float64))
    torch.testing.assert_close(task.inputs.mean(0), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(task.inputs[:, 1], torch.zeros(4, dtype=torch.float64))  # a constant column stays at 0
    torch.testing.assert_close(task.inputs[:, 0].std(correction=0).item(), 1.0)


def test_csv_target_and_losses(tmp_path: Path) -> None:
    path = _write(tmp_path, "label,x1,x2\nno,1,2\nyes,3,1\nno,0,0\nyes,2,2\n")
    task = _csv_task(path, target="label", loss="logistic")
    assert task.output_dim == 1
    torch.testing.assert_close(task.targets[:, 0], torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    path = _write(tmp_path, "x1,x2,c\n1,2,0\n3,1,2\n0,0,1\n2,2,2\n", "classes.csv")
    task = _csv_task(path, loss="cross_entropy")
    assert task.output_dim == 3 and task.targets.dtype == torch.int64 and task.targets.tolist() == [0, 2, 1, 2]


def _huge(tmp_path: Path) -> str:
    path = tmp_path / "huge.csv"
    with path.open("wb") as f:
        f.truncate(51 * 2**20)  # sparse: fast to make, still over the 50 MB limit
    return str(path)


@pytest.mark.parametrize(
    ("content", "changes", "words"),
    [
        (None, {}, "cannot read it: it is missing, not a regular file, not readable or over 50 MB"),
        ("", {}, "the file is empty"),
        (b"\xff\xfe\x00\x81\x9f" * 40, {}, "not a readable CSV file (not UTF-8 text)"),
        ("a,b\n1,2\n3,4,5,6\n", {}, "not a readable CSV file (line 3 has 4 fields, the header 2)"),
        ("a,b\n", {}, "0 data rows; at least 2"),
        ("a,b\n1,2\n", {}, "1 data rows; at least 2"),
        ("a,b,y\n1,x,2\n3,4,5\n", {}, "column 2 is not numeric (line 2)"),
        ("a,y\n1,2\n3,4\n", {"target": "price"}, "target column 'price' not found among the file's 2 columns"),
        ("a,b,y\n1,,2\n3,4,5\n", {}, "column 2 has a missing (NaN) or infinite value at line 2"),
        ("a,b,y\n1,2,2\n3,inf,5\n", {}, "column 2 has a missing (NaN) or infinite value at line 3"),
        ("a,y\n1,2\n3,\n", {}, "column 2 has a missing"),
        ("y\n1\n2\n", {}, "no feature columns"),
        ("a,y\n1,p\n3,q\n", {}, "the target column (2) is not numeric"),
        ("a,y\n1,0\n3,1\n4,2\n", {"loss": "logistic"}, "exactly 2 distinct values in the target column (2), found 3"),
        ("a,y\n1,0\n3,1.5\n", {"loss": "cross_entropy"}, "integer class labels 0..C-1"),
        ("a,y\n1,-1\n3,1\n", {"loss": "cross_entropy"}, "integer class labels 0..C-1"),
        (
            "a,y\n1,0\n3,300\n",
            {"loss": "cross_entropy"},
            "at most 256 classes; the target column (2) has a label of more",
        ),
    ],
)
def test_csv_errors(tmp_path: Path, content: str | bytes | None, changes: dict, words: str) -> None:
    path = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        _csv_task(str(path), **changes)
    assert str(path) in str(err.value) and words in str(err.value)


def test_csv_too_large(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="over 50 MB"):
        _csv_task(_huge(tmp_path))


def test_csv_too_many_rows(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,y\n" + "1,2\n" * 100_001)
    with pytest.raises(ConfigError, match="more than 100,000 rows"):
        _csv_task(path)


# --- CSV files from anyone: nothing quoted, nothing told about other paths, sizes counted before parsing ------


@pytest.mark.parametrize(
    ("content", "changes"),
    [
        ("SECRET=hunter2\nabc\ndef\n", {}),  # any one-column file: its first line was the "target"
        ("SECRETa,SECRETy\n1,2\n3,4\n", {"target": "price"}),
        ("a,b,y\n1,SECRETx,2\n3,4,5\n", {}),
        ("a,SECRETy\n1,SECRETp\n3,SECRETq\n", {}),
        ("a,SECRETy\n1,0\n3,1\n4,2\n", {"loss": "logistic"}),
        ("a,SECRETy\n1,0\n3,1.5\n", {"loss": "cross_entropy"}),
        ("a,SECRETy\n1,0\n3,300\n", {"loss": "cross_entropy"}),
        ("SECRETa,b\n1,2\n3,4,SECRET5,6\n", {}),
        ('a,b\n1,2\n3,"SECRET\n', {}),
        (b"SECRET,y\n1,\xff\xfe\n2,3\n", {}),
    ],
)
def test_csv_errors_never_quote_the_file(tmp_path: Path, content: str | bytes, changes: dict) -> None:
    """A dashboard shows these messages: a file's names and values stay out of them (11.2)."""
    path = tmp_path / "other.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ConfigError) as err:
        _csv_task(str(path), **changes)
    assert "SECRET" not in str(err.value) and "hunter2" not in str(err.value), err.value


def test_csv_refusals_do_not_tell_which_paths_exist(tmp_path: Path) -> None:
    """Missing, a folder, a FIFO, a device, too large: one message, so a message never reveals what exists. A FIFO
    does not block and /dev/zero is not read."""
    import os
    import time

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    paths = [tmp_path / "missing.csv", tmp_path, fifo, Path("/dev/zero"), Path(_huge(tmp_path))]
    whys = set()
    start = time.monotonic()
    for path in paths:
        with pytest.raises(ConfigError) as err:
            _csv_task(str(path))
        whys.add(str(err.value).replace(repr(str(path)), "PATH"))
    assert time.monotonic() - start < 5
    assert whys == {
        "data.csv_path = PATH: cannot read it: it is missing, not a regular file, not readable or over 50 MB"
    }


def test_csv_columns_and_cells_are_counted_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10^6 columns in 12 MB once ran 180 s and took 3 GiB: now refused from the header, pandas never called."""
    import time

    import pandas as pd

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pandas parsed a file that the caps refuse")

    monkeypatch.setattr(pd, "read_csv", no_parse)
    n = 10**6
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(n)) + "\n" + ",".join("1" for _ in range(n)) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="1,000,000 columns; at most 4,097 are read"):
        _csv_task(str(wide))
    assert time.monotonic() - start < 5
    header = ",".join(f"c{i}" for i in range(3000))  # within the column cap, but 3000 x 4000 = 1.2 x 10^7 values
    cells = tmp_path / "cells.csv"
    cells.write_text(header + "\n" + ("," * 2999 + "\n") * 4000)
    with pytest.raises(ConfigError, match="3,000 columns x 4,000 rows: more than 10,000,000 values"):
        _csv_task(str(cells))
    quoted = tmp_path / "quoted.csv"  # a header with a quoted line break is still counted as one record
    quoted.write_text('"a\n' + "b," * 5000 + '",y\n1,2\n3,4\n')
    monkeypatch.undo()
    assert _csv_task(str(quoted)).input_shape == (1,)  # type: ignore[attr-defined]
