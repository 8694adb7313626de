r"""node_flow: gradient flows of deep networks seen through a lifting $z = \varphi(\theta)$.

Parameter-space flows, their conservation laws, the intrinsic flows of $z$, and the
infinite-depth limit of linear networks, the linear neural ODE. See `THEORY.md`.
"""

from . import (
    criterion as criterion,
    init as init,
    kernels as kernels,
    neural_ode as neural_ode,
    plot as plot,
    relu as relu,
)
from ._cache import enable_compilation_cache as enable_compilation_cache
from ._conservation import conservation_laws as conservation_laws
from ._crossing import crossing_time as crossing_time
from ._descent import gradient_descent as gradient_descent
from ._effective_rank import effective_rank as effective_rank
from ._flow import (
    FlowError as FlowError,
    gradient_flow as gradient_flow,
    intrinsic_flow as intrinsic_flow,
)
from ._lifting import AbstractLifting as AbstractLifting
from ._linear import LinearNetwork as LinearNetwork
from ._log_polar import log_polar_flow as log_polar_flow, LogPolar as LogPolar
from ._loss import (
    LeastSquares as LeastSquares,
    MatrixCompletion as MatrixCompletion,
    MatrixSensing as MatrixSensing,
)
from ._metric import metric as metric
from ._neural_ode import LinearNeuralODE as LinearNeuralODE
from ._residual import ResidualLinearNetwork as ResidualLinearNetwork
from ._solution import (
    DescentSolution as DescentSolution,
    FlowSolution as FlowSolution,
    RESULTS as RESULTS,
)
from ._stiff import stiff_solver as stiff_solver
from ._sweep import sweep as sweep, SweepResult as SweepResult


__version__ = "0.1.0"
