r"""Built-in liftings $\varphi$, usable directly with `node_flow.criterion`.

Each is an `eqx.Module` with static sizes: call it on θ to get $z = \varphi(\theta)$,
`.sample(key)` draws a Gaussian θ of the right structure, and `.conserved(θ)` (where the laws are
known in closed form) returns the known conserved quantities, to pass as `conserved=`.
"""

from ._linear import (
    deep_linear as deep_linear,
    DeepLinear as DeepLinear,
    Residual as Residual,
    residual as residual,
)
from ._neural_ode import neural_ode_grid as neural_ode_grid, NeuralODEGrid as NeuralODEGrid
from ._paths import (
    rank_one as rank_one,
    RankOne as RankOne,
    relu_paths as relu_paths,
    ReLUPaths as ReLUPaths,
)
