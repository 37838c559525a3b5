"""Shared pieces of the parity runner: one result type and one comparison rule."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class CheckResult:
    fixture: str  # e.g. "dit_pyramid_flux_forward.json:case1"
    max_abs: float
    rel_l2: float
    tol_max_abs: float
    tol_rel_l2: float
    error: str | None = None  # set when the check could not be run

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.max_abs == self.max_abs  # not NaN
            and self.max_abs <= self.tol_max_abs
            and self.rel_l2 <= self.tol_rel_l2
        )

    def line(self) -> str:
        status = "OK  " if self.ok else "FAIL"
        if self.error:
            return f"{status} {self.fixture}: could not run: {self.error}"
        return (
            f"{status} {self.fixture}: max_abs={self.max_abs:.3e} (tol {self.tol_max_abs:.0e}) "
            f"rel_l2={self.rel_l2:.3e} (tol {self.tol_rel_l2:.0e})"
        )


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, *, tol_max_abs: float, tol_rel_l2: float) -> CheckResult:
    if tuple(ours.shape) != tuple(ref.shape):
        return CheckResult(name, float("nan"), float("nan"), tol_max_abs, tol_rel_l2,
                           error=f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}")
    a = ours.detach().to(torch.float64).cpu()
    b = ref.detach().to(torch.float64).cpu()
    diff = a - b
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    denom = float(b.norm())
    rel = float(diff.norm()) / denom if denom > 0 else float(diff.norm())
    if not torch.isfinite(a).all():
        return CheckResult(name, float("nan"), float("nan"), tol_max_abs, tol_rel_l2, error="non-finite output")
    return CheckResult(name, max_abs, rel, tol_max_abs, tol_rel_l2)


def error_result(name: str, exc: BaseException) -> CheckResult:
    return CheckResult(name, float("nan"), float("nan"), 0.0, 0.0, error=f"{type(exc).__name__}: {exc}")
