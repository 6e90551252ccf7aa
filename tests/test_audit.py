"""balance.audit: exactly the expected symmetries of hand-built models, each checked in float64; what breaks one is
reported with the reason; a model that cannot be traced is named; the model itself is left as it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import balance
from balance.cli.core import main
from balance.watch.check import EXACT, audit
from balance.watch.trace import AuditError

ROOT = Path(__file__).resolve().parents[1]


def mlp(activation: nn.Module, bias: bool = True) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8, bias=bias), activation, nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


class Power(nn.Module):  # ReLU^k units through torch.pow and **
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.pow(F.relu(self.b(F.relu(self.a(x)) ** 2)), 3))


class Offset(nn.Module):  # a constant added after the activation: not homogeneous
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x)) + 1.0)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(F.relu(h + self.b(F.relu(h))))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 2)
        self.b.weight = self.a.weight  # weight tying

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


class LoRA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(12, 10).requires_grad_(False)
        self.A = nn.Parameter(torch.randn(3, 12) / 12**0.5)
        self.B = nn.Parameter(torch.zeros(10, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * 2.0


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0])


class Branchy(nn.Module):  # data-dependent control flow in a submodule: torch.fx cannot trace it
    def __init__(self) -> None:
        super().__init__()
        self.inner = Choose()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.inner(x))


class Choose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def conv_net(pool: nn.Module, eps: float = 1e-5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=eps), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), pool,
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(5 * 3 * 3, 2),
    )  # fmt: skip


def layer_norm_net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6, eps=1e-12), nn.Linear(6, 2))


X = torch.randn(7, 5)
CASES = {
    "relu": (mlp(nn.ReLU()), X, ["rescale:0 → 2", "rescale:2 → 4"]),
    "leaky relu": (mlp(nn.LeakyReLU(0.1)), X, ["rescale:0 → 2", "rescale:2 → 4"]),
    "identity": (mlp(nn.Identity()), X, ["linear_pair:0 → 2 (linear)", "rescale:2 → 4"]),
    "no biases": (mlp(nn.ReLU(), bias=False), X, ["rescale:0 → 2", "rescale:2 → 4"]),
    "tanh": (mlp(nn.Tanh()), X, ["rescale:2 → 4"]),
    "gelu": (mlp(nn.GELU()), X, ["rescale:2 → 4"]),
    "relu powers": (Power(), torch.randn(7, 4), ["rescale_power:a → b (degree 2)", "rescale_power:b → c (degree 3)"]),
    "offset": (Offset(), torch.randn(7, 4), []),
    "residual": (Residual(), torch.randn(7, 4), []),
    "tied": (Tied(), torch.randn(7, 4), []),
    "lora": (LoRA(), torch.randn(7, 12), ["linear_pair:A → B (low-rank pair, as LoRA)"]),
    "attention": (Attention(), torch.randn(3, 4, 8), ["attention_qk:attn (W_Q, W_K per head, 2 heads)",
                                                      "attention_vo:attn (W_V, W_O per head, 2 heads)",
                                                      "linear_pair:attn.out_proj → head (linear)"]),
    "max pool": (conv_net(nn.MaxPool2d(2)), torch.randn(6, 3, 8, 8),
                 ["batchnorm_scale:0 (scale, before 1)", "rescale:1 → 3", "rescale:3 → 8"]),
    "avg pool": (conv_net(nn.AvgPool2d(2)), torch.randn(6, 3, 8, 8),
                 ["batchnorm_scale:0 (scale, before 1)", "rescale:1 → 3", "rescale:3 → 8"]),
    "layer norm": (layer_norm_net(), X, ["layernorm_scale:0 (scale, before 1)", "rescale:1 → 2"]),
}  # fmt: skip


def found(model: nn.Module, x: torch.Tensor) -> list[str]:
    return sorted(f"{c.kind}:{c.law.name}" for c in audit(model, x).laws)


@pytest.mark.parametrize("case", list(CASES))
def test_the_audit_finds_exactly_the_expected_laws(case: str) -> None:
    model, x, expected = CASES[case]
    assert found(model, x) == sorted(expected)


@pytest.mark.parametrize("case", list(CASES))
def test_every_law_found_passes_its_float64_checks(case: str) -> None:
    model, x, _ = CASES[case]
    for checked in audit(model, x).laws:
        if checked.status == "exact":
            assert checked.invariance <= EXACT and checked.step <= EXACT
        else:  # BatchNorm's eps = 1e-5: the scale symmetry is approximate, and said to be
            assert checked.kind == "batchnorm_scale" and "eps" in checked.law.approximate
            assert 1e-9 < max(checked.invariance, checked.step) < 1e-3


def test_a_tiny_batchnorm_eps_makes_the_scale_law_exact() -> None:
    report = audit(conv_net(nn.MaxPool2d(2), eps=1e-30), torch.randn(6, 3, 8, 8))
    scale = [c for c in report.laws if c.kind == "batchnorm_scale"]
    assert [c.status for c in scale] == ["exact"]
    assert scale[0].invariance <= EXACT and scale[0].step <= EXACT


def test_a_tanh_model_has_no_law_and_says_why() -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2))
    report = audit(model, X)
    assert report.laws == []
    reasons = {n.where: n.reason for n in report.no_laws}
    assert "tanh is not positively homogeneous" in reasons["0"] and "tanh" in reasons["2"]
    assert "output" in reasons["4"]


@pytest.mark.parametrize(
    ("case", "where", "words"),
    [
        ("gelu", "0", "gelu is not positively homogeneous"),
        ("offset", "a", "a constant (not a parameter) is added"),
        ("residual", "a", "added to another branch"),
        ("tied", "a → b", "weight tying"),
        ("lora", "base", "added to another branch"),
    ],
)
def test_what_breaks_a_symmetry_is_named(case: str, where: str, words: str) -> None:
    model, x, _ = CASES[case]
    reasons = {n.where: n.reason for n in audit(model, x).no_laws}
    assert words in reasons[where]


def test_a_batchnorm_in_eval_mode_breaks_the_scale_symmetry() -> None:
    model = conv_net(nn.MaxPool2d(2)).eval()
    report = audit(model, torch.randn(6, 3, 8, 8))
    assert "batchnorm_scale" not in {c.kind for c in report.laws}
    assert any("eval mode" in n.reason for n in report.no_laws)


def test_an_untraceable_model_is_named() -> None:
    with pytest.raises(AuditError, match=r"module 'inner' \(Choose\)"):
        audit(Branchy(), torch.randn(3, 4))


def test_the_audit_leaves_the_model_and_the_random_generator_alone() -> None:
    model, x = conv_net(nn.MaxPool2d(2)), torch.randn(6, 3, 8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    audit(model, x)
    assert torch.equal(torch.rand(3), expected)  # the training loop's random numbers are the same with or without
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm's running statistics


def test_a_false_symmetry_is_caught_by_the_numerical_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend tanh were homogeneous: the graph then proposes a law, and the float64 check refuses it.
    from balance.watch import trace

    monkeypatch.setitem(trace.TRANSPARENT_MODULES, "Tanh", (False, 1))
    report = audit(mlp(nn.Tanh()), X)
    assert [c.law.name for c in report.laws] == ["2 → 4"]
    refused = {n.where: n.reason for n in report.no_laws}["0 → 2"]
    assert "the check fails" in refused


def test_the_report_reads_as_text_and_as_a_table() -> None:
    report = balance.audit(mlp(nn.ReLU()), X)
    assert "rescale" in str(report) and "no law here" in str(report)
    table = report.frame()
    assert list(table.columns) == ["kind", "where", "conserved", "size", "invariance", "step", "status"]
    assert (table["kind"] == "rescale").sum() == 2


FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def factory():
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(5, 3)

    def broken():
        raise RuntimeError("no data here")
    """
)


def test_the_command_line_audits_a_factory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.py"
    path.write_text(FACTORY)
    assert main(["audit", f"{path}:factory"]) == 0
    out = capsys.readouterr().out
    assert "rescale" in out and "0 → 2" in out and "exact" in out


@pytest.mark.parametrize(
    ("target", "words"),
    [("missing.py:factory", "not a Python file"), ("{path}:nothing", "has no function 'nothing'"),
     ("{path}:broken", "RuntimeError: no data here"), ("{path}", "give FILE.py:factory")],
)  # fmt: skip
def test_bad_input_to_the_command_line_is_one_line_and_exit_2(tmp_path: Path, target: str, words: str) -> None:
    path = tmp_path / "model.py"
    path.write_text(FACTORY)
    target = target.format(path=path)
    done = subprocess.run(
        [sys.executable, "-m", "balance", "audit", target], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and words in done.stderr


def test_the_examples_audit_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(ROOT / "examples" / "transformer_block.py") + ":factory"]) == 0
    out = capsys.readouterr().out
    assert "attention_qk" in out and "attention_vo" in out and "fc1 → fc2" in out
