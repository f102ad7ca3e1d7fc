"""Residual diffusion (ResShift) for CellResDM."""

from cellresdm.diffusion.resshift import LOSS_WEIGHTINGS, ResShiftDiffusion, ResShiftSchedule

__all__ = ["LOSS_WEIGHTINGS", "ResShiftDiffusion", "ResShiftSchedule"]
