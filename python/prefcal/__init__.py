"""prefcal: are the model's probabilities honest?

Calibration of ranking, preference and reward models, with C++ (OpenMP) and CUDA kernels behind a NumPy
API. This release provides the binned calibration core (SPEC §4): :func:`reliability`, :func:`ece`,
:func:`multiclass_ece`, :func:`brier`, :func:`log_loss` and the mergeable :class:`Reliability` table; the
Plackett-Luce engine :mod:`prefcal.pl` (SPEC §2), permutation marginals :mod:`prefcal.marginals` (SPEC §3) and
temperature recalibration :mod:`prefcal.recalibrate` (SPEC §7); the calibration hierarchy of rankings
:mod:`prefcal.ranking` (SPEC §5), reward-model evaluation :mod:`prefcal.reward` (SPEC §6) and label-noise EM
:mod:`prefcal.noise` (SPEC §8); and :mod:`prefcal.torch` (optional) with the
ListMLE loss.

Importing prefcal imports neither CuPy nor torch; their arrays are accepted when you pass them.
"""

from . import calibration, config, marginals, metrics, noise, pl, ranking, recalibrate, reward
from ._backend import backends
from ._version import __version__
from .calibration import Reliability, brier, ece, log_loss, multiclass_ece, reliability

__all__ = [
    "__version__",
    "backends",
    "calibration",
    "config",
    "marginals",
    "metrics",
    "noise",
    "pl",
    "ranking",
    "recalibrate",
    "reward",
    "Reliability",
    "reliability",
    "ece",
    "multiclass_ece",
    "brier",
    "log_loss",
]
