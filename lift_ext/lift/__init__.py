"""LiFT: SGLD-Gibbs posterior sampling of a shared adapter prior, an online Gaussian mixture
over its samples, and meta-test adaptation under that mixture prior (docs/design.md sections 3, 5
and 10).

    SGLDGibbs         the sampler on flat vectors with a user-supplied gradient (no nn.Module
                      needed); prior="paper" or "mixture", tasks_per_step
    ShardedSGLDGibbs  the same chain with its tasks sharded over a torch.distributed group
    FlatParams        a module's adapter tensors packed into one float32 vector (params become
                      views); load_(theta) writes a vector back into the module
    MixturePrior      the meta-test prior over a new task's adapter (a diagonal Gaussian mixture)
    LiFT              meta-training of a model's adapter over tasks (SGLDGibbs on FlatParams), its
                      meta-test prior, apply / export_peft of an adapter, save / load
    ShardedLiFT       LiFT over a sharded chain, each rank holding only its tasks' data
    adapt             meta-test adaptation under a mixture prior (MAP to a stopping rule, or SGLD)
    best_component    the component adapt starts from by default, chosen once for several adaptations
"""
from lift_ext.lift.adapt import Adapted, adapt, average_predictions, best_component
from lift_ext.lift.batched_grad import mean_loss_grad
from lift_ext.lift.config import (LangevinConfig, MapConfig, MixtureHierarchy, PaperHierarchy, SamplingConfig,
                                  config_from_dict)
from lift_ext.lift.distributed import ShardedSGLDGibbs, Sharding
from lift_ext.lift.flat import FlatParams
from lift_ext.lift.prior import MixturePrior
from lift_ext.lift.sampler import ChainStart, SGLDGibbs
from lift_ext.lift.sharded_trainer import ShardedLiFT
from lift_ext.lift.tasks import Task, TensorTask
from lift_ext.lift.trainer import LiFT

__all__ = ["LangevinConfig", "PaperHierarchy", "MixtureHierarchy", "MapConfig", "SamplingConfig", "config_from_dict",
           "ChainStart", "Sharding", "SGLDGibbs", "ShardedSGLDGibbs", "mean_loss_grad", "FlatParams", "MixturePrior", "LiFT",
           "ShardedLiFT", "Task", "TensorTask", "adapt", "Adapted", "average_predictions",
           "best_component"]
