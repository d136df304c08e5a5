"""optimjax: the classic optimizers as composable optax GradientTransformations, on torch.optim's trajectory."""

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
from optimjax import fused as fused
from optimjax.learning_rate import ScaleByLearningRateState as ScaleByLearningRateState
from optimjax.learning_rate import scale_by_learning_rate as scale_by_learning_rate
from optimjax.nadam import ScaleByNadamState as ScaleByNadamState
from optimjax.nadam import momentum_schedule as momentum_schedule
from optimjax.nadam import nadam as nadam
from optimjax.nadam import nadamw as nadamw
from optimjax.nadam import scale_by_nadam as scale_by_nadam
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

__version__ = "0.1.0"
