"""optimjax: the classic optimizers as composable optax GradientTransformations, on torch.optim's trajectory."""

from types import ModuleType as _ModuleType

from optimjax.adadelta import ScaleByAdadeltaState as ScaleByAdadeltaState
from optimjax.adadelta import adadelta as adadelta
from optimjax.adadelta import scale_by_adadelta as scale_by_adadelta
from optimjax.adagrad import ScaleByAdagradState as ScaleByAdagradState
from optimjax.adagrad import adagrad as adagrad
from optimjax.adagrad import scale_by_adagrad as scale_by_adagrad
from optimjax.adam import ScaleByAdamState as ScaleByAdamState
from optimjax.adam import adam as adam
from optimjax.adam import adamw as adamw
from optimjax.adam import amsgrad as amsgrad
from optimjax.adam import scale_by_adam as scale_by_adam
from optimjax.clipping import ClipGradNormState as ClipGradNormState
from optimjax.clipping import clip_grad_norm as clip_grad_norm
from optimjax.clipping import clip_grad_value as clip_grad_value
from optimjax.clipping import total_grad_norm as total_grad_norm
from optimjax import fused as fused
from optimjax import port as port
from optimjax.lbfgs import Lbfgs as Lbfgs
from optimjax.lbfgs import LbfgsState as LbfgsState
from optimjax.lbfgs import lbfgs as lbfgs
from optimjax.learning_rate import ScaleByLearningRateState as ScaleByLearningRateState
from optimjax.learning_rate import scale_by_learning_rate as scale_by_learning_rate
from optimjax.muon import ScaleByMuonState as ScaleByMuonState
from optimjax.muon import muon as muon
from optimjax.muon import orthogonalize as orthogonalize
from optimjax.muon import scale_by_muon as scale_by_muon
from optimjax.nadam import ScaleByNadamState as ScaleByNadamState
from optimjax.nadam import momentum_schedule as momentum_schedule
from optimjax.nadam import nadam as nadam
from optimjax.nadam import nadamw as nadamw
from optimjax.nadam import scale_by_nadam as scale_by_nadam
from optimjax.plateau import ReduceLROnPlateauState as ReduceLROnPlateauState
from optimjax.plateau import reduce_lr_on_plateau as reduce_lr_on_plateau
from optimjax import schedules as schedules
from optimjax.rmsprop import ScaleByRmsState as ScaleByRmsState
from optimjax.rmsprop import rmsprop as rmsprop
from optimjax.rmsprop import scale_by_rms as scale_by_rms
from optimjax.sgd import MomentumState as MomentumState
from optimjax.sgd import momentum as momentum
from optimjax.sgd import nesterov as nesterov
from optimjax.sgd import scale_by_momentum as scale_by_momentum
from optimjax.sgd import scale_by_nesterov_momentum as scale_by_nesterov_momentum
from optimjax.sgd import sgd as sgd
from optimjax.weight_decay import AddDecayedWeightsState as AddDecayedWeightsState
from optimjax.weight_decay import add_decayed_weights as add_decayed_weights
from optimjax.adafactor import ScaleByAdafactorState as ScaleByAdafactorState
from optimjax.adafactor import adafactor as adafactor
from optimjax.adafactor import scale_by_adafactor as scale_by_adafactor
from optimjax.adamax import ScaleByAdamaxState as ScaleByAdamaxState
from optimjax.adamax import adamax as adamax
from optimjax.adamax import scale_by_adamax as scale_by_adamax
from optimjax.asgd import ScaleByAsgdState as ScaleByAsgdState
from optimjax.asgd import asgd as asgd
from optimjax.asgd import asgd_averaged_params as asgd_averaged_params
from optimjax.asgd import scale_by_asgd as scale_by_asgd
from optimjax.radam import ScaleByRadamState as ScaleByRadamState
from optimjax.radam import radam as radam
from optimjax.radam import scale_by_radam as scale_by_radam
from optimjax.rprop import ScaleByRpropState as ScaleByRpropState
from optimjax.rprop import rprop as rprop
from optimjax.rprop import scale_by_rprop as scale_by_rprop

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it, CHANGELOG.md lists it

# The public names are those imported above with `import ... as name`: the functions and states re-exported flat,
# and the modules exported as namespaces (`fused`, `schedules`), told apart from the modules that only come along
# with their flat names (optimjax.adam, optimjax.learning_rate, ...). tests/test_packaging.py checks this list
# against the `as` imports of this file.
_flat = {getattr(_value, "__module__", None) for _value in globals().values() if not isinstance(_value, _ModuleType)}
__all__ = sorted(
    _name
    for _name, _value in globals().items()
    if not _name.startswith("_") and (not isinstance(_value, _ModuleType) or _value.__name__ not in _flat)
)
del _flat
