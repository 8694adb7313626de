"""ReLU networks on DAGs: path-lifting, conservation laws and intrinsic recovery (THEORY §4)."""

from ._architecture import Architecture as Architecture, mlp_architecture as mlp_architecture
from ._dag import DAGNetwork as DAGNetwork
from ._lifting import (
    path_activity as path_activity,
    path_features as path_features,
    path_jacobian as path_jacobian,
    path_metric as path_metric,
    path_products as path_products,
)
from ._mlp import MLP as MLP
from ._network import (
    AbstractReLUNetwork as AbstractReLUNetwork,
    conservation_laws as conservation_laws,
    metric_matrix as metric_matrix,
)
from ._rescaling import (
    intrinsic_kernel as intrinsic_kernel,
    IntrinsicKernel as IntrinsicKernel,
    recover_squares as recover_squares,
    two_layer_squares as two_layer_squares,
)
from ._training import (
    Chattering as Chattering,
    Interval as Interval,
    network_loss as network_loss,
    pattern_loss as pattern_loss,
    PatternChange as PatternChange,
    PatternLoss as PatternLoss,
    train as train,
    TrainingSolution as TrainingSolution,
)
